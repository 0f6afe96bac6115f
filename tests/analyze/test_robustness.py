"""Corruptions (exact at severity 0, growing with severity, seeded, uint8 in and out) and the
robustness analysis (accuracies against an independent loop, files, the model left as it was)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from tests.analyze.conftest import accuracy, make_subject, pattern_images

from cnnvit.analyze.analyses.robustness import (
    render_robustness,
    robustness_headline,
    robustness_verdict,
)
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.registry import Column, get_analysis
from cnnvit.analyze.robustness import CORRUPTIONS, PARAMETERS, blur_sigmas, corrupt
from cnnvit.analyze.run import analyse
from cnnvit.folders import AnalysisFolder


def _smooth_grey(n: int = 8, size: int = 28) -> torch.Tensor:
    """uint8 (n, 1, size, size): Fashion-MNIST-like objects (graded ellipses) on black."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 1, size, size), np.uint8)
    rng = np.random.default_rng(1)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(0.35, 0.65, 2).tolist() + rng.uniform(0.2, 0.35, 2).tolist()
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        out[i, 0][inside] = (80 + 150 * yy)[inside].astype(np.uint8)
    return torch.from_numpy(out)


def _smooth_colour(n: int = 8, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): striped colour discs on colour gradients (CIFAR-like scale)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(2)
    out = np.zeros((n, 3, size, size), np.uint8)
    for i in range(n):
        base = rng.uniform(40, 160, 3)[:, None, None]
        background = base + 60 * yy[None] * rng.uniform(-1, 1, 3)[:, None, None]
        cy, cx = rng.uniform(0.35, 0.65, 2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(0.04, 0.09)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * (xx + yy))
        colour = rng.uniform(80, 255, 3)[:, None, None] * (0.6 + 0.4 * stripes[None])
        out[i] = np.where(inside[None], colour, background).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(out)


BATCHES = {
    "noisy colour 32px": pattern_images(12, size=32, seed=5).images,
    "colour 32px": _smooth_colour(),
    "grey on black 28px": _smooth_grey(),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_severity_zero_is_the_clean_image_and_a_copy(name, batch):
    x = BATCHES[batch]
    y = corrupt(x, name, 0)
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_each_corruption_changes_the_image_more_with_severity(name, batch):
    x = BATCHES[batch]
    diffs = []
    for severity in range(0, 6):
        gen = torch.Generator().manual_seed(0)
        y = corrupt(x, name, severity, generator=gen)
        diffs.append(float((y.float() - x.float()).abs().mean()))
    assert diffs[0] == 0
    assert all(a < b for a, b in pairwise(diffs)), diffs


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_output_dtype_shape_device(name, batch):
    x = BATCHES[batch]
    for severity in (1, 5):
        y = corrupt(x, name, severity)
        assert y.dtype == torch.uint8 and y.shape == x.shape and y.device == x.device
    assert not torch.equal(corrupt(x, name, 5), x)


def test_noise_is_seeded():
    x = BATCHES["colour 32px"]

    def noisy(seed):
        return corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(noisy(7), noisy(7))
    assert not torch.equal(noisy(7), noisy(8))
    # Without a generator the call repeats itself (seeded 0), not the global RNG.
    torch.manual_seed(123)
    first = corrupt(x, "gaussian_noise", 3)
    torch.manual_seed(456)
    assert torch.equal(first, corrupt(x, "gaussian_noise", 3))
    assert torch.equal(first, noisy(0))


def test_noise_has_the_imagenet_c_standard_deviation():
    x = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)  # mid-grey: no clipping at 0.08
    y = corrupt(x, "gaussian_noise", 1, generator=torch.Generator().manual_seed(0))
    std = float((y.float() - 128).std() / 255)
    assert abs(std - 0.08) < 0.003


def test_brightness_equals_imagenet_c_hsv_formula():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 16, 16), dtype=np.uint8))
    for severity in (1, 4):
        c = PARAMETERS["brightness"][severity - 1]
        hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy() / 255.0)  # ImageNet-C via HSV
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        expected = np.clip(hsv_to_rgb(hsv), 0, 1) * 255
        got = corrupt(x, "brightness", severity).permute(0, 2, 3, 1).numpy().astype(float)
        assert np.abs(got - expected).max() <= 1.0  # rounding only


def test_contrast_and_pixelate_against_their_definitions():
    x = BATCHES["grey on black 28px"]
    c = PARAMETERS["contrast"][1]
    mean = x.float().mean(dim=(1, 2, 3), keepdim=True)  # grey image: grey mean = pixel mean
    expected = (c * x.float() + (1 - c) * mean).clamp(0, 255)
    assert (corrupt(x, "contrast", 2).float() - expected).abs().max() <= 1.0
    # Pixelation to int(28 * 0.25) = 7 blocks a side: each 4x4 block holds one value.
    y = corrupt(x, "pixelate", 5)[0, 0]
    blocks = y.reshape(7, 4, 7, 4)
    assert torch.equal(blocks.amax(dim=(1, 3)), blocks.amin(dim=(1, 3)))


def test_blur_sigmas_follow_the_published_tables():
    assert blur_sigmas(224) == pytest.approx(PARAMETERS["gaussian_blur"])
    assert blur_sigmas(32) == pytest.approx((0.4, 0.6, 0.7, 0.8, 1.0))  # CIFAR-10-C
    assert blur_sigmas(64) == pytest.approx((0.5, 0.75, 1.0, 1.25, 1.5))  # Tiny-ImageNet-C
    assert blur_sigmas(28) == pytest.approx(tuple(s * 28 / 32 for s in (0.4, 0.6, 0.7, 0.8, 1)))
    assert blur_sigmas(448) == pytest.approx(tuple(2 * s for s in PARAMETERS["gaussian_blur"]))


def test_corrupt_rejects_bad_input():
    x = BATCHES["grey on black 28px"]
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.float(), "contrast", 1)


# --- the analysis --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def robustness_images() -> ImageSet:
    return pattern_images(48, size=32, seed=11)


def _independent_accuracy(subject, images: ImageSet, name: str, severity: int) -> float:
    """A deterministic corruption applied one image at a time, each image scored alone."""
    hits = 0
    for i in range(len(images)):
        x = corrupt(images.images[i : i + 1], name, severity)
        hits += int(subject.logits(x).argmax(1)[0] == images.labels[i])
    return hits / len(images)


def test_accuracies_equal_an_independent_loop(trained_cnn, robustness_images, tmp_path):
    result = analyse(
        "robustness",
        [trained_cnn],
        tmp_path,
        val=robustness_images,
        corruptions=["rotation", "gaussian_noise"],
        severities=(2, 5),
        batch_size=20,  # uneven batches: 20, 20, 8
        seed=3,
        progress=False,
    )
    (m,) = result["models"]
    clean = accuracy(trained_cnn, robustness_images)
    assert m["clean_accuracy"] == pytest.approx(clean)
    assert clean > 0.9  # the trained fixture, else the comparison says little
    for severity in (2, 5):
        expected = _independent_accuracy(trained_cnn, robustness_images, "rotation", severity)
        assert m["accuracy"]["rotation"][str(severity)] == pytest.approx(expected)
    # Noise: the generator is seeded once per (corruption, severity) and runs across batches.
    gen = torch.Generator().manual_seed(3)
    hits = 0
    for batch, labels in robustness_images.batches(20):
        noisy = corrupt(batch, "gaussian_noise", 5, generator=gen)
        hits += int((trained_cnn.logits(noisy).argmax(1) == labels).sum())
    assert m["accuracy"]["gaussian_noise"]["5"] == pytest.approx(hits / len(robustness_images))
    # The summary numbers follow from the table.
    by = {n: np.mean(list(m["accuracy"][n].values())) for n in ("rotation", "gaussian_noise")}
    assert m["mean_corruption_accuracy"] == pytest.approx(np.mean(list(by.values())))
    assert m["relative_accuracy"] == pytest.approx(m["mean_corruption_accuracy"] / clean)


def test_run_writes_files_and_leaves_models_unchanged(trained_cnn, robustness_images, tmp_path):
    vit = make_subject("vit_mini")  # seeded random: enough to see it left unchanged
    probe = robustness_images.images[:8]  # (8, 3, 32, 32)
    before = [trained_cnn.logits(probe), vit.logits(probe)]
    modes = [trained_cnn.model.training, vit.model.training]
    images = robustness_images.subset(32)
    names = ["gaussian_noise", "jpeg", "rotation"]
    result = analyse(
        "robustness",
        [trained_cnn, vit],
        tmp_path,
        val=images,
        corruptions=names,
        severities=(1, 5),
        batch_size=16,
        progress=False,
    )
    assert torch.equal(trained_cnn.logits(probe), before[0])
    assert torch.equal(vit.logits(probe), before[1])
    assert [trained_cnn.model.training, vit.model.training] == modes
    assert all(p.requires_grad for p in trained_cnn.model.parameters())

    on_disk = json.loads((tmp_path / "robustness.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["settings"]["corruptions"] == names
    assert on_disk["settings"]["images"] == len(images) == 32
    for m in on_disk["models"]:
        for name in names:
            assert set(m["accuracy"][name]) == {"1", "5"}
            assert all(0 <= a <= 1 for a in m["accuracy"][name].values())
    with (tmp_path / "robustness.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (1 + len(names) * 2)
    first = next(r for r in rows if r["model"] == vit.label and r["corruption"] == "jpeg")
    assert float(first["accuracy"]) == pytest.approx(result["models"][1]["accuracy"]["jpeg"]["1"])
    assert {r["model"] for r in rows} == {trained_cnn.label, vit.label}
    for name in ("robustness.png", "corruption_examples.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    html = render_robustness(AnalysisFolder(tmp_path, "robustness"))
    assert html.count("<img") == 2 and "relative" in html
    assert vit.label in html


def test_run_rejects_bad_options(trained_cnn, robustness_images, tmp_path):
    def run(images=robustness_images, **options):
        return analyse("robustness", [trained_cnn], tmp_path, val=images, **options)

    with pytest.raises(ValueError, match="unknown corruption"):
        run(corruptions=["snow"])
    with pytest.raises(ValueError, match="at least one corruption"):
        run(corruptions=[])
    with pytest.raises(ValueError, match="severities"):
        run(severities=(0, 6))
    other = ImageSet(robustness_images.images, robustness_images.labels, list("abcd"), "x")
    with pytest.raises(ValueError, match="trained on"):
        run(other)


def test_render_notes_missing_or_damaged_results(tmp_path):
    folder = AnalysisFolder(tmp_path, "robustness")
    assert "missing or damaged" in render_robustness(folder)
    (tmp_path / "robustness.json").write_text("{not json")
    assert "missing or damaged" in render_robustness(folder)


def test_render_escapes_labels(tmp_path):
    result = {
        "settings": {"images": 4, "corruptions": ["contrast"], "severities": [1]},
        "models": [
            {
                "label": "<script>x</script>",
                "clean_accuracy": 0.5,
                "mean_corruption_accuracy": 0.25,
                "relative_accuracy": 0.5,
                "mean_by_corruption": {"contrast": 0.25},
            }
        ],
        "figures": {"accuracy": "robustness.png"},
    }
    (tmp_path / "robustness.json").write_text(json.dumps(result))
    html = render_robustness(AnalysisFolder(tmp_path, "robustness"))
    assert "<script>x" not in html and "&lt;script&gt;" in html
    assert "robustness.png is missing" in html


# --- the summary -------------------------------------------------------------------------------


def test_headline_and_verdict_read_the_json():
    data = {
        "settings": {"corruptions": ["contrast", "jpeg"], "severities": [1, 2, 3]},
        "models": [
            {"label": "cnn", "mean_corruption_accuracy": 0.45, "relative_accuracy": 0.5},
            {"label": "<vit>", "mean_corruption_accuracy": 0.49, "relative_accuracy": 0.7},
            {"label": "mlp", "mean_corruption_accuracy": 0.2, "relative_accuracy": None},
            "not a model",
        ],
    }
    headline = robustness_headline(data)
    assert headline["cnn"] == {"corruption_accuracy": 0.45, "relative_robustness": 0.5}
    assert headline["<vit>"] == {"corruption_accuracy": 0.49, "relative_robustness": 0.7}
    assert headline["mlp"]["corruption_accuracy"] == 0.2
    assert np.isnan(headline["mlp"]["relative_robustness"])  # not a number: NaN
    assert set(headline) == {"cnn", "<vit>", "mlp"}
    assert robustness_verdict(data) == (
        "Under 2 corruptions at 3 severities, <vit> keeps 70 % of its clean accuracy (49.0 % on "
        "average); cnn keeps 50 % of its clean accuracy (45.0 % on average)."
    )
    # Without settings the sentence says "the" corruptions at "several" severities.
    assert robustness_verdict({"models": data["models"]}).startswith(
        "Under the corruptions at several severities, <vit> keeps 70 %"
    )
    # One model measured: nothing to compare.
    assert robustness_verdict({"settings": {}, "models": data["models"][:1]}) is None
    assert robustness_headline({"models": "damaged"}) == {}


def test_registered_with_the_old_title_verb_and_defaults():
    item = get_analysis("robustness")
    assert (item.title, item.anchor, item.order) == ("Corruption robustness", "robustness", 70)
    assert item.command.name == "robustness" and not item.command.defaults
    assert item.columns == {
        "corruption_accuracy": Column("corrupted", "pct"),
        "relative_robustness": Column("kept", "pct"),
    }
    options = item.default_options()
    assert options.model_dump() == {
        "images": 500,
        "corruptions": None,
        "severities": [1, 2, 3, 4, 5],
        "batch_size": 256,
        "seed": 0,
    }
    extra = type(options).model_fields["corruptions"].json_schema_extra
    assert extra == {"flag": "--corruption", "action": "append"}


def test_the_analysis_module_imports_no_torch():
    code = "import cnnvit.analyze.analyses.robustness, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
