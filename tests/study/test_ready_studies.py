"""Every ready study in studies/ runs end to end through `cnnvit compare`, unchanged except for
tiny sizes (1 epoch, 1 seed, 32 px), on stand-in data written in the real formats at the paths
the study names, and with local weight files of the real architectures where it asks for
pretrained weights (there is no hub here).

Each test also checks what the study is for: unfrozen depths and trainable parameter counts
against counts taken from fresh timm models, per-family optimisers, the recipe, class counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from cnnvit.cli import main
from cnnvit.config import load_yaml_documents
from stand_in_data import (
    CIFAR10_CLASSES,
    write_cifar10_python,
    write_cifar100,
    write_har,
    write_svhn,
)

STUDIES = Path(__file__).resolve().parents[2] / "studies"
TINY = [
    "seeds=[0]",
    "recipe.train.epochs=1",
    "data.image_size=32",
    "data.num_workers=0",
    "profile.enabled=false",  # tests/study/test_compare.py covers the profile step
]

pytestmark = pytest.mark.slow


def _published_weights(arch: str, folder: Path) -> Path:
    """A 1000-class checkpoint of ``arch`` (random values), as a hub download would be."""
    path = folder / f"{arch}.safetensors"
    if not path.exists():
        folder.mkdir(exist_ok=True)
        save_file(timm.create_model(arch).state_dict(), path)
    return path


def _without_hub(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``pretrained: true`` -> the same architecture's weights from a local file."""
    for model in doc.get("models", []):
        if not isinstance(model, dict) or not model.get("pretrained"):
            continue
        arch = model["name"].split(".")[0]
        model["pretrained"] = False
        if arch.startswith("vit_convblock_"):  # pretrained = the inner ViT's weights
            inner = arch.replace("convblock_", "") + "_224"  # vit_base_patch16_224
            model.setdefault("kwargs", {})["vit_weights"] = str(_published_weights(inner, folder))
        else:
            model["weights"] = str(_published_weights(arch, folder))
    return doc


def _compare(study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the study (rewritten for no hub) from ``tmp_path``, where its data paths resolve."""
    docs = [_without_hub(d, tmp_path / "weights") for d in load_yaml_documents(STUDIES / study)]
    local = tmp_path / study
    local.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["compare", str(local), "--out", str(out), "--no-progress"]
    assert main([*args, *(a for o in TINY for a in ("--set", o))]) == 0
    return out


def _cells(study_dir: Path) -> dict[str, dict[str, Any]]:
    """Each cell's results.json and resolved config, by cell id; every cell completed."""
    meta = json.loads((study_dir / "study.json").read_text())
    assert (study_dir / "report.html").is_file()
    for name in yaml.safe_load((study_dir / "study.yaml").read_text()).get("analysis") or []:
        folder = study_dir / "analysis" / name
        assert not (folder / "error.txt").exists(), (folder / "error.txt").read_text()
        assert (folder / "run.json").is_file(), name
    out = {}
    for cell in meta["cells"]:
        run = study_dir / "runs" / cell["id"]
        results = json.loads((run / "results.json").read_text())
        assert results["status"] == "completed", (cell["id"], results.get("error"))
        out[cell["id"]] = {**results, "config": yaml.safe_load((run / "config.yaml").read_text())}
    return out


def _trainable(arch: str, prefixes: tuple[str, ...], **kwargs: Any) -> int:
    model = timm.create_model(arch, num_classes=2, **kwargs)
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def _cifar10_cat_dog(tmp_path: Path) -> None:
    # 60 images per batch file: about 60 cats and dogs to train on, 12 to validate on
    write_cifar10_python(
        tmp_path / "data" / "cifar-10-batches-py", per_batch=60, label_names=CIFAR10_CLASSES
    )


def test_seed000_catdog_finetune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cifar10_cat_dog(tmp_path)
    cells = _cells(_compare("seed000_catdog_finetune.yaml", tmp_path, monkeypatch))
    assert len(cells) == 5 * 3  # models x fractions
    assert {c["num_classes"] for c in cells.values()} == {2}
    resnet = cells["ResNet-101-f1-s0"]
    assert resnet["params_trainable"] == _trainable("resnet101", ("layer4.1.", "layer4.2.", "fc."))
    vit = cells["ViT-B_16-f1-s0"]
    vit_prefixes = ("blocks.9.", "blocks.10.", "blocks.11.", "norm.", "head.")
    assert vit["params_trainable"] == _trainable("vit_base_patch16_224", vit_prefixes, img_size=32)
    hybrid = cells["Hybrid_conv_+_ViT-B_16-f1-s0"]
    conv_block = 3 * 64 * 9 + 64 + 64 * 3 * 9 + 3  # two 3x3 convs with biases, 3 -> 64 -> 3
    assert hybrid["params_trainable"] == vit["params_trainable"] + conv_block
    assert hybrid["config"]["model"]["freeze"] == {
        "trainable_blocks": 3,
        "also_trainable": ["conv_block"],
    }
    assert resnet["config"]["optim"]["name"] == "sgd" and resnet["config"]["optim"]["lr"] == 0.01
    assert resnet["num_train_images"] > cells["ResNet-101-f0.25-s0"]["num_train_images"]


def test_seed000_freeze_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cifar10_cat_dog(tmp_path)
    cells = _cells(_compare("seed000_freeze_sweep.yaml", tmp_path, monkeypatch))
    resnet_blocks = ["layer3.22.", "layer4.0.", "layer4.1.", "layer4.2."]
    for k in (1, 2, 3, 4):
        expected = _trainable("resnet101", (*resnet_blocks[4 - k :], "fc."))
        assert cells[f"ResNet-101-f1-k{k}-s0"]["params_trainable"] == expected
        assert cells[f"ResNet-101-f1-k{k}-s0"]["trainable_blocks"] == k
    vit = [cells[f"ViT-B_16-f1-k{k}-s0"]["params_trainable"] for k in (1, 2, 3, 4)]
    block = vit[1] - vit[0]
    assert block == 7_087_872  # one ViT-B block: 12 * 768^2 + 13 * 768 weights and biases
    assert vit == [vit[0] + i * block for i in range(4)]


def test_seed001_har_transfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classes = [f"action_{i}" for i in range(15)]
    write_har(tmp_path / "data" / "human-action-recognition", classes, per_class=3)
    out = _compare("seed001_har_transfer.yaml", tmp_path, monkeypatch)
    cells = _cells(out)
    assert len(cells) == 3 * 3
    assert {c["num_classes"] for c in cells.values()} == {15}
    optim = {
        cid: (c["config"]["optim"]["name"], c["config"]["optim"]["lr"]) for cid, c in cells.items()
    }
    # The optimiser follows the seed's family split; the rate is each model's tuned one.
    tuning = json.loads((out / "tuning" / "tuning.json").read_text())
    assert len(tuning["trials"]) == 3 * 3 and tuning["fraction"] == 0.1
    chosen = {model: setting["lr"] for model, setting in tuning["chosen"].items()}
    assert set(chosen.values()) <= {1e-4, 3e-4, 1e-3}
    assert optim["ResNet-18-f1-s0"] == ("adam", chosen["ResNet-18"])
    assert optim["ViT-B_16-f1-s0"] == ("adamw", chosen["ViT-B/16"])
    assert optim["ViT-Ti_16-f1-s0"] == ("adamw", chosen["ViT-Ti/16"])
    assert cells["ResNet-18-f1-s0"]["config"]["train"]["batch_size"] == 32
    # 20 % held out, stratified: one of each class's three images
    assert cells["ResNet-18-f1-s0"]["num_test_images"] == 15


@pytest.mark.parametrize("study", ["seed003_gresnet.yaml", "seed003_gresnet_ablation.yaml"])
def test_seed003(study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = "imagenet" if study == "seed003_gresnet.yaml" else "imagenette2-320"
    _image_folder(tmp_path / "data" / folder, classes=3, per_class=4)
    cells = _cells(_compare(study, tmp_path, monkeypatch))
    gresnet = cells["GResNet-50-f1-s0"]
    assert gresnet["evaluated_weights"] == "ema"
    cfg = gresnet["config"]
    assert cfg["optim"]["label_smoothing"] == 0.1 and cfg["data"]["augment"]["cutmix_alpha"] == 1.0
    if study == "seed003_gresnet.yaml":
        assert cells["ViT-S_16-f1-s0"]["config"]["optim"]["name"] == "adamw"
        assert cells["ResNet-50-f1-s0"]["config"]["optim"]["name"] == "sgd"
    else:
        assert len(cells) == 8
        # split normalisation adds no parameters; switching it off changes none either
        assert cells["plain_BatchNorm-f1-s0"]["params_total"] == gresnet["params_total"]
        assert cells["no_deep_stem-f1-s0"]["params_total"] != gresnet["params_total"]


def _image_folder(root: Path, classes: int, per_class: int) -> None:
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"n0{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (40, 48, 3), generator=rng, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / f"n0{c}" / f"{i}.JPEG")


def test_seed004_small_data_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_cifar10_python(data / "cifar-10-batches-py", per_batch=40, label_names=CIFAR10_CLASSES)
    write_cifar100(data / "cifar-100-python", binary=False, per_split=300)
    (data / "svhn").mkdir()
    write_svhn(data / "svhn" / "train_32x32.mat", 100, seed=0)
    write_svhn(data / "svhn" / "test_32x32.mat", 30, seed=1)
    out = _compare("seed004_small_data_scratch.yaml", tmp_path, monkeypatch)
    assert sorted(p.name for p in out.iterdir()) == [
        "seed004-cifar10",
        "seed004-cifar100",
        "seed004-svhn",
    ]
    classes = {"seed004-cifar10": 10, "seed004-cifar100": 100, "seed004-svhn": 10}
    for name, num_classes in classes.items():
        cells = _cells(out / name)
        assert len(cells) == 2 * 3
        assert {c["num_classes"] for c in cells.values()} == {num_classes}
        cfg = cells["ResNet-18-f1-s0"]["config"]
        assert (cfg["optim"]["name"], cfg["optim"]["lr"], cfg["train"]["batch_size"]) == (
            "adam",
            1e-4,
            100,
        )
        assert cfg["data"]["normalize"] == "none" and cfg["data"]["augment"]["crop_padding"] == 4
