"""The command line: exit codes and messages for bad input, and the evaluate paths."""

import json
from pathlib import Path

from cnnvit.cli import main

FAST = [
    "--data",
    "synthetic:train_size=256,val_size=128,image_size=16",
    "--model",
    "resnet_mini",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--no-progress",
]


def test_unknown_config_key_exits_2_naming_it(capsys):
    assert main(["train", "--set", "optim.lrr=1e-3"]) == 2
    assert "unknown config key 'optim.lrr'; did you mean optim.lr" in capsys.readouterr().err


def test_unknown_model_suggests_close_names(capsys, tmp_path: Path):
    assert main(["train", *FAST, "--model", "resnet_mni", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "resnet_mni" in err and "resnet_mini" in err


def test_missing_data_path_is_named(capsys, tmp_path: Path):
    missing = tmp_path / "nowhere"
    assert main(["train", "--data", f"folder:{missing}", "--out", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # a run that never started leaves no folder behind


def test_train_then_evaluate_dir_and_weights(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()

    assert main(["evaluate", str(run), "--no-progress"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["top1"] == trained["top1"]
    assert again["confusion_matrix"] == trained["confusion_matrix"]

    weights = next((run / "checkpoints").glob("epoch-*/model.safetensors"))
    out = tmp_path / "eval"
    capsys.readouterr()
    args = ["evaluate", *FAST[:4], "--weights", str(weights), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (
        printed["top1"] == trained["top1"] == json.loads((out / "metrics.json").read_text())["top1"]
    )
    assert printed["num_images"] == 128


def test_evaluate_without_a_run_or_weights_explains(capsys):
    assert main(["evaluate", "--model", "resnet_mini"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_resume_of_a_non_run_folder_is_refused(tmp_path: Path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_models_lists_every_builtin_with_count_and_origin(capsys):
    from cnnvit.models import create_model, list_builtin_models
    from cnnvit.models.registry import describe_builtin_models

    rows = {r["name"]: r for r in describe_builtin_models()}
    assert set(rows) == set(list_builtin_models())
    assert all(r["description"] for r in rows.values())
    for name in ("resnet_mini", "vit_mini"):
        model = create_model(name, num_classes=10)
        assert rows[name]["params"] == sum(p.numel() for p in model.parameters())
    assert main(["models"]) == 0
    err = capsys.readouterr().err
    assert "308,826" in err and "seed 004" in err


def test_evaluate_several_models_in_one_pass(tmp_path: Path, capsys):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from cnnvit.models import create_model

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(3):
            (tmp_path / "photos" / c).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / c / f"{i}.png")
    args = ["evaluate", "--data", f"folder:{tmp_path / 'photos'}", "--no-progress"]
    for name in ("resnet_mini", "vit_mini"):
        torch.manual_seed(0)
        weights = tmp_path / f"{name}.safetensors"
        save_file(create_model(name, num_classes=2).state_dict(), weights)
        args += ["--model", name, "--weights", str(weights)]
    out = tmp_path / "eval"
    assert main([*args, "--out", str(out), "--num-workers", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "evaluation.json").read_text())
    assert [m["label"] for m in summary["models"]] == list(printed) == ["resnet_mini", "vit_mini"]
    for name in printed:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["num_images"] == 6 and printed[name]["top1"] == metrics["top1"]
    assert main([*args[:-2], "--out", str(out)]) == 2  # two models, one weights file
    assert "1 --weights for 2 --model" in capsys.readouterr().err


def test_classify_prints_five_sorted_labels_per_model(tmp_path: Path):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from timm.data import ImageNetInfo

    from cnnvit.models import create_model

    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)).save(image)
    args = ["classify", str(image), "--json", str(tmp_path / "top5.json"), "--device", "cpu"]
    for name in ("resnet_mini", "vit_mini"):
        torch.manual_seed(0)
        weights = tmp_path / f"{name}.safetensors"
        save_file(create_model(name, num_classes=1000).state_dict(), weights)
        args += ["--model", name, "--weights", str(weights)]
    assert main(args) == 0
    rows = json.loads((tmp_path / "top5.json").read_text())
    assert [r["model"] for r in rows] == ["resnet_mini", "vit_mini"]
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    for r in rows:
        assert len(r["labels"]) == 5 and all(label in names for label in r["labels"])
        assert r["probs"] == sorted(r["probs"], reverse=True) and sum(r["probs"]) <= 1 + 1e-6
        assert r["forward_ms"] > 0
    assert main(["classify", str(tmp_path / "none.jpg"), "--model", "resnet_mini"]) == 2


def test_agree_on_two_runs(tmp_path: Path, capsys):
    runs = []
    for name in ("resnet_mini", "vit_mini"):
        run = tmp_path / name
        assert main(["train", *FAST, "--model", name, "--out", str(run)]) == 0
        runs.append(run)
    capsys.readouterr()
    out = tmp_path / "agreement"
    assert main(["agree", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().err
    result = json.loads((out / "agreement.json").read_text())
    counts = [result["counts"][k] for k in ("both_right", "only_a", "only_b", "both_wrong")]
    assert sum(counts) == result["num_images"] == 128  # FAST's synthetic validation images
    assert "McNemar's exact test" in printed and "verdict:" in printed
    assert main(["agree", str(runs[0]), str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_profile_writes_the_json_it_prints(tmp_path: Path):
    from cnnvit.models import create_model
    from cnnvit.ui import console

    out = tmp_path / "profile.json"
    args = ["profile", "--model", "resnet_mini", "--image-size", "32", "--batch-size", "4"]
    with console.capture() as captured:
        assert main([*args, "--no-train", "--json", str(out), "--no-progress"]) == 0
    profile = json.loads(out.read_text())["profiles"][0]
    model = create_model("resnet_mini", num_classes=1000)
    assert profile["cost"]["params_total"] == sum(p.numel() for p in model.parameters())
    assert (profile["model"], profile["image_size"], profile["batch_size"]) == (
        "resnet_mini",
        32,
        4,
    )
    assert "resnet_mini" in captured.get()
    assert main(["profile"]) == 2
