"""Shape bias: the measure on constructed answers, through ``analyse("shape_bias", ...)`` with a
model that looks its answer up; the generated set (silhouette of S, pixels of T, balanced,
seeded); the model-vs-human folder layout and the 16-category ImageNet aggregation; the report
section; the summary's headline and verdict."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.analyze.conftest import PATTERN_CLASSES, make_subject, pattern_boxes
from torch import nn

from cnnvit.analyze.analyses.shape_bias import (
    SEED,
    render_shape_bias,
    shape_bias_headline,
    shape_bias_verdict,
)
from cnnvit.analyze.cue_conflict import (
    IMAGENET_16_CATEGORIES,
    CueConflictSet,
    aggregate_imagenet16,
    foreground_mask,
    make_cue_conflict,
    read_cue_conflict_folder,
    shape_bias,
)
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.run import analyse
from cnnvit.analyze.subject import Subject
from cnnvit.folders import AnalysisFolder

NUM = 48  # 4 classes: 12 ordered pairs, 4 images each
SHAPES = ["disc", "square", "triangle", "cross"]


def shape_masks(size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One bool (size, size) silhouette per class, placed and sized at random."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    r = int(rng.integers(size // 5, size // 3))
    return [
        (yy - cy) ** 2 + (xx - cx) ** 2 < r * r,
        (abs(yy - cy) < r) & (abs(xx - cx) < r),
        (yy - cy + r >= 0) & (yy - cy < r) & (abs(xx - cx) <= (yy - cy + r) / 2),
        ((abs(yy - cy) < r) & (abs(xx - cx) < r // 3 + 1))
        | ((abs(xx - cx) < r) & (abs(yy - cy) < r // 3 + 1)),
    ]


def textures(size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One uint8 (3, size, size) texture per class, with per-image noise so no two match."""
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = [
        yy % 4 < 2,
        (yy // 2 + xx // 2) % 2 == 0,
        rng.random((size, size)) < 0.3,
        xx % 3 == 0,
    ]
    colours = [(230, 60, 60), (60, 200, 90), (90, 110, 240), (220, 210, 70)]
    out = []
    for pattern, colour in zip(patterns, colours, strict=True):
        base = np.where(pattern[None], np.array(colour)[:, None, None], 70)
        out.append((base + rng.integers(-25, 26, (3, size, size))).clip(1, 255).astype(np.uint8))
    return out


def shapes_set(n: int, size: int = 32, seed: int = 0) -> tuple[ImageSet, np.ndarray]:
    """Class k: shape k filled with texture k on black (n images, class i % 4), and each
    image's true silhouette (n, size, size)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, size, size), np.uint8)
    truth = np.zeros((n, size, size), bool)
    for i in range(n):
        k = i % 4
        truth[i] = shape_masks(size, rng)[k]
        images[i] = np.where(truth[i][None], textures(size, rng)[k], 0)
    labels = torch.arange(n) % 4
    return ImageSet(torch.from_numpy(images), labels, SHAPES, "shapes"), truth


@pytest.fixture(scope="module")
def source_and_truth():
    return shapes_set(64, seed=3)


@pytest.fixture(scope="module")
def source(source_and_truth) -> ImageSet:
    return source_and_truth[0]


@pytest.fixture(scope="module")
def cue_set(source) -> CueConflictSet:
    return make_cue_conflict(source, num_images=NUM, seed=1)


@pytest.fixture(scope="module")
def analysed_set(source) -> CueConflictSet:
    """The set the analysis generates from ``source``: its seed is fixed (``SEED``)."""
    return make_cue_conflict(source, num_images=NUM, seed=SEED)


class Lookup(nn.Module):
    """Answers, for each input, the class stored for the nearest stored input (one-hot logits):
    a model whose every answer the test chooses, run through the real pipeline."""

    def __init__(self, keys: torch.Tensor, answers: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("keys", keys.flatten(1))  # (N, D)
        self.register_buffer("answers", answers)  # (N,)
        self.scale = nn.Parameter(torch.ones(()))  # something for preserved() to look after
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x.flatten(1), self.keys).argmin(dim=1)  # (B,)
        onehot = nn.functional.one_hot(self.answers[nearest], self.num_classes)  # (B, K)
        return self.scale * onehot.float()


def lookup_subject(images: torch.Tensor, answers, classes, label="lookup", size=32) -> Subject:
    subject = Subject(
        label=label,
        model=nn.Identity(),
        family="cnn",
        classes=list(classes),
        image_size=size,
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        device=torch.device("cpu"),
    )
    keys = subject.prepare(images)  # (N, 3, size, size): what the model will be given
    subject.model = Lookup(keys, torch.as_tensor(answers), len(classes)).eval()
    return subject


def _third(shape: torch.Tensor, texture: torch.Tensor, k: int) -> torch.Tensor:
    """A class that is neither the shape's nor the texture's."""
    return torch.tensor(
        [min(set(range(k)) - {int(s), int(t)}) for s, t in zip(shape, texture, strict=True)]
    )


# --- the measure ----------------------------------------------------------------------------


def test_shape_bias_counts_and_excludes_agreeing_images():
    shape = [0, 0, 1, 1, 2, 2, 3]
    texture = [1, 0, 0, 2, 0, 2, 3]  # images 1, 5, 6 agree: left out whatever the answer
    pred = [0, 0, 0, 3, 2, 2, 3]
    result = shape_bias(pred, shape, texture, classes=["a", "b", "c", "d"])
    assert result["conflicts"] == 4
    assert (result["shape_hits"], result["texture_hits"], result["neither"]) == (2, 1, 1)
    assert result["shape_bias"] == pytest.approx(2 / 3)
    assert set(result["per_class"]) == {"a", "b", "c"}
    assert result["per_class"]["a"]["shape_bias"] == 1.0
    assert result["per_class"]["b"]["shape_bias"] == 0.0  # image 2: texture hit
    assert result["per_class"]["c"]["shape_hits"] == 1
    empty = shape_bias([2, 3], [0, 1], [1, 0])
    assert empty["neither"] == 2 and math.isnan(empty["shape_bias"])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("texture", 0.0), ("shape", 1.0), ("mixed", None), ("third", math.nan)],
)
def test_run_shape_bias_on_models_that_answer_one_cue(
    source, analysed_set, tmp_path, answer, expected
):
    shape, texture = analysed_set.shape_labels, analysed_set.texture_labels
    answers = {
        "texture": texture,
        "shape": shape,
        "mixed": torch.where(torch.arange(NUM) % 3 == 0, shape, texture),
        "third": _third(shape, texture, 4),
    }[answer]
    subject = lookup_subject(analysed_set.images, answers, SHAPES, label=f"{answer} model")
    # The run regenerates the set from the same images and seed: the model must find each image.
    result = analyse("shape_bias", [subject], tmp_path, val=source, num_images=NUM, progress=False)
    (m,) = result["models"]
    assert m["conflicts"] == NUM
    if answer == "mixed":
        expected = int((torch.arange(NUM) % 3 == 0).sum()) / NUM
    if answer == "third":
        assert m["shape_bias"] is None and m["neither"] == NUM
    else:
        assert m["shape_bias"] == pytest.approx(expected)
        assert m["shape_hits"] + m["texture_hits"] == NUM
    on_disk = json.loads((tmp_path / "shape_bias.json").read_text())
    assert on_disk["models"][0]["shape_bias"] == m["shape_bias"]
    texture_png = tmp_path / f"texture_{answer}_model.png"  # the label made safe for a file
    assert texture_png.is_file() == (answer in ("texture", "mixed"))
    assert m["texture_figure"] == (texture_png.name if texture_png.is_file() else None)
    assert len(m["texture_images"]) == m["texture_hits"]


def test_run_writes_files_and_leaves_a_real_model_unchanged(patterns, tmp_path):
    model = make_subject("resnet_mini")  # seeded random: only its outputs before and after count
    probe = patterns.images[:8]  # (8, 3, 32, 32)
    before = model.logits(probe)
    flags = [p.requires_grad for p in model.model.parameters()]
    result = analyse("shape_bias", [model], tmp_path, val=patterns, num_images=24, progress=False)
    assert torch.equal(model.logits(probe), before)
    assert [p.requires_grad for p in model.model.parameters()] == flags
    assert not model.model.training
    settings = result["settings"]
    assert settings["source"] == "generated" and settings["images"] == 24
    assert settings["classes"] == PATTERN_CLASSES
    for name in ("shape_bias.png", "cue_conflict_examples.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "shape_bias.csv").read_text().splitlines()
    assert lines[0].startswith("model,shape_class,shape_hits")
    assert lines[1].startswith(f"{model.label},all,{result['models'][0]['shape_hits']},")
    html = render_shape_bias(AnalysisFolder(tmp_path, "shape_bias"))
    assert html.count("<img") >= 2 and model.label in html


def test_run_needs_images_or_a_folder(source, cue_set, tmp_path):
    subject = lookup_subject(cue_set.images, cue_set.shape_labels, SHAPES)
    with pytest.raises(ValueError, match="folder"):
        analyse("shape_bias", [subject], tmp_path, progress=False)


# --- the generated set ----------------------------------------------------------------------


def _sources(name: str) -> tuple[int, int]:
    """The shape and texture source indices from a generated id ``<shape><i>-<texture><j>``."""
    match = re.fullmatch(r"(.+?)(\d+)-(.+?)(\d+)", name)
    assert match is not None, name
    return int(match.group(2)), int(match.group(4))


def test_generated_images_carry_the_silhouette_of_s_and_the_pixels_of_t(source_and_truth, cue_set):
    source, truth = source_and_truth
    ious = []
    for i in range(len(cue_set)):
        s, t = _sources(cue_set.names[i])
        assert int(source.labels[s]) == int(cue_set.shape_labels[i])
        assert int(source.labels[t]) == int(cue_set.texture_labels[i])
        image, shape_img, texture_img = cue_set.images[i], source.images[s], source.images[t]
        silhouette = foreground_mask(image.numpy())  # found again, in the cue-conflict image
        ious.append((silhouette & truth[s]).sum() / (silhouette | truth[s]).sum())
        # Outside S's object the image is S (black); inside, every pixel is one of T's object's.
        outside = torch.from_numpy(~truth[s])
        assert torch.equal(image[:, outside], shape_img[:, outside])
        t_pixels = {tuple(p) for p in texture_img[:, torch.from_numpy(truth[t])].T.tolist()}
        inside = image[:, torch.from_numpy(truth[s])].T.tolist()
        assert all(tuple(p) in t_pixels for p in inside)
    assert np.mean(ious) > 0.95 and min(ious) > 0.85


def test_foreground_mask_finds_objects_on_noisy_backgrounds():
    images, _ = pattern_boxes(32, size=32, seed=0)  # bright objects (230) on noise (0..59)
    for image in images.images:
        truth = (image == 230).all(dim=0).numpy()
        mask = foreground_mask(image.numpy())
        assert (mask & truth).sum() / (mask | truth).sum() > 0.95


def test_generated_images_on_black_keep_the_outline_and_take_the_texture():
    # Fashion-MNIST-like: one grey channel, objects on black; class 0 is a dark, finely
    # striped disc, class 1 a bright, flat square.
    size, n = 28, 8
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        if i % 2 == 0:
            disc = (yy - 14) ** 2 + (xx - 14) ** 2 < 81
            images[i, 0][disc] = np.where(yy[disc] % 2 == 0, 60, 110)
        else:
            images[i, 0, 6:22, 6:22] = 220
    grey = ImageSet(torch.from_numpy(images), torch.arange(n) % 2, ["disc", "square"], "g")
    made = make_cue_conflict(grey, num_images=6, seed=0)
    assert made.images.shape == (6, 1, size, size)
    for i in range(len(made)):
        inside = made.images[i, 0][foreground_mask(grey.images[_sources(made.names[i])[0]].numpy())]
        if int(made.shape_labels[i]) == 0:  # disc outline, square's flat bright texture
            assert set(inside.unique().tolist()) == {220}
            silhouette = foreground_mask(made.images[i].numpy())
            disc = (yy - 14) ** 2 + (xx - 14) ** 2 < 81
            assert (silhouette & disc).sum() / (silhouette | disc).sum() > 0.95
        else:  # square outline, the disc's stripes
            assert set(inside.unique().tolist()) == {60, 110}


def test_generated_set_is_balanced_seeded_and_conflicting(source, cue_set):
    pairs = Counter(
        zip(cue_set.shape_labels.tolist(), cue_set.texture_labels.tolist(), strict=True)
    )
    assert len(pairs) == 12 and set(pairs.values()) == {NUM // 12}
    assert all(a != b for a, b in pairs)
    again = make_cue_conflict(source, num_images=NUM, seed=1)
    assert torch.equal(again.images, cue_set.images) and again.names == cue_set.names
    other = make_cue_conflict(source, num_images=NUM, seed=2)
    assert not torch.equal(other.images, cue_set.images)
    odd = make_cue_conflict(source, num_images=17, seed=0)  # 12 pairs + 5 more, all different
    counts = Counter(zip(odd.shape_labels.tolist(), odd.texture_labels.tolist(), strict=True))
    assert len(odd) == 17 and sorted(counts.values()) == [1] * 7 + [2] * 5


def test_make_cue_conflict_needs_two_classes(source):
    one = source.take(np.nonzero(source.labels.numpy() == 0)[0])
    with pytest.raises(ValueError, match="at least two classes"):
        make_cue_conflict(one)


# --- model-vs-human folders -----------------------------------------------------------------


def _write(folder: Path, relative: str, seed: int, size=(40, 48)) -> None:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)  # (H, W, 3)
    Image.fromarray(pixels).save(path)


def test_folder_in_model_vs_human_layout(tmp_path):
    files = [
        "cat/cat7-elephant1.png",
        "cat/cat2-cat3.png",  # agreeing: kept in the set, left out of the measure
        "elephant/stylized_elephant3-knife10.png",  # a prefix before '_'
        "h-bars/h-bars12-v-bars2.png",  # class names with '-'
    ]
    for i, name in enumerate(files):
        _write(tmp_path, name, i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    read = read_cue_conflict_folder(tmp_path, image_size=32)
    assert read.classes == ["cat", "elephant", "h-bars", "knife", "v-bars"]
    assert read.names == sorted(read.names) and len(read) == 4
    shape = [read.classes[i] for i in read.shape_labels]
    texture = [read.classes[i] for i in read.texture_labels]
    by_name = dict(zip(read.names, zip(shape, texture, strict=True), strict=True))
    assert by_name["cat/cat7-elephant1.png"] == ("cat", "elephant")
    assert by_name["cat/cat2-cat3.png"] == ("cat", "cat")
    assert by_name["elephant/stylized_elephant3-knife10.png"] == ("elephant", "knife")
    assert by_name["h-bars/h-bars12-v-bars2.png"] == ("h-bars", "v-bars")
    assert read.images.shape == (4, 3, 32, 32) and read.images.dtype == torch.uint8


def test_folder_with_a_badly_named_file_is_an_error(tmp_path):
    _write(tmp_path, "cat/dog7-elephant1.png", 0)
    with pytest.raises(ValueError, match=r"dog7-elephant1\.png"):
        read_cue_conflict_folder(tmp_path)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        read_cue_conflict_folder(tmp_path / "empty")


def test_folder_run_with_the_models_own_classes(tmp_path):
    for i, name in enumerate(["square/square1-frame1.png", "frame/frame1-square2.png"]):
        _write(tmp_path / "set", name, i)
    read = read_cue_conflict_folder(tmp_path / "set", image_size=32)
    subject = lookup_subject(read.images, read.shape_labels.clone(), ["frame", "square"])
    # The model's classes in a different order and with one more: answers map by name.
    subject.classes = ["square", "frame", "h-bars"]
    subject.model.answers = torch.tensor([1, 0])  # frame for frame-shape, square for square
    subject.model.num_classes = 3
    result = analyse("shape_bias", [subject], tmp_path / "out", folder=tmp_path / "set")
    (m,) = result["models"]
    assert m["mapping"] == "direct" and m["shape_bias"] == 1.0
    assert result["settings"]["source"] == "folder"
    stranger = lookup_subject(read.images, [0, 0], ["cat", "dog"], label="other")
    with pytest.raises(ValueError, match=r"\['frame', 'square'\]"):
        analyse("shape_bias", [stranger], tmp_path / "out2", folder=tmp_path / "set")


def test_imagenet16_aggregation_is_the_mean_probability():
    torch.manual_seed(0)
    logits = torch.randn(5, 1000)
    probs = logits.softmax(dim=1)
    got = aggregate_imagenet16(logits)
    assert got.shape == (5, 16)
    categories = list(IMAGENET_16_CATEGORIES)
    assert categories == sorted(categories)  # model-vs-human's order
    # Index lists as published by model-vs-human (helper/human_categories.py), spot-checked.
    manual = {
        "cat": [281, 282, 283, 284, 285, 286],
        "elephant": [385, 386],
        "knife": [499],
        "truck": [555, 569, 656, 675, 717, 734, 864, 867],
        "bear": [294, 295, 296, 297],
        "dog": [
            *(152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167),
            *(168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183),
            *(184, 185, 186, 187, 188, 189, 190, 191, 193, 194, 195, 196, 197, 198, 199, 200),
            *(201, 202, 203, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217),
            *(218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230, 231, 232, 233, 234),
            *(235, 236, 237, 238, 239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250, 252),
            *(253, 254, 255, 256, 257, 259, 261, 262, 263, 265, 266, 267, 268),
        ],
    }
    for name, ids in manual.items():
        expected = probs[:, ids].mean(dim=1)
        assert torch.allclose(got[:, categories.index(name)], expected, atol=1e-7)
    sizes = {k: len(v) for k, v in IMAGENET_16_CATEGORIES.items()}
    assert sizes["dog"] == 109 and sizes["bird"] == 49 and sum(sizes.values()) == 207
    every = [i for ids in IMAGENET_16_CATEGORIES.values() for i in ids]
    assert len(every) == len(set(every)) and all(0 <= i < 1000 for i in every)


def test_imagenet_model_answers_through_the_16_categories(tmp_path):
    for i, name in enumerate(["cat/cat1-elephant1.png", "elephant/elephant1-cat2.png"]):
        _write(tmp_path / "set", name, i)
    read = read_cue_conflict_folder(tmp_path / "set", image_size=32)
    # Always the texture: elephant (ImageNet 386) for the cat shape, a tabby cat (281) for the
    # elephant shape.
    shapes = [read.classes[i] for i in read.shape_labels]
    answers = torch.tensor([386 if s == "cat" else 281 for s in shapes])
    subject = lookup_subject(read.images, answers, [f"n{i:04d}" for i in range(1000)])
    result = analyse("shape_bias", [subject], tmp_path / "out", folder=tmp_path / "set")
    (m,) = result["models"]
    assert m["mapping"] == "imagenet16"
    assert m["shape_bias"] == 0.0 and m["texture_hits"] == 2


# --- the report section -----------------------------------------------------------------------


def test_render_notes_missing_or_damaged_results(tmp_path):
    folder = AnalysisFolder(tmp_path, "shape_bias")
    assert "missing or damaged" in render_shape_bias(folder)
    (tmp_path / "shape_bias.json").write_text('{"models": 3}')
    assert "missing or damaged" in render_shape_bias(folder)


def test_render_escapes_labels_and_notes_missing_figures(tmp_path):
    result = {
        "settings": {"source": "folder", "folder": "<i>f</i>", "images": 2},
        "models": [
            {
                "label": "<b>m</b>",
                "shape_bias": None,
                "shape_hits": 0,
                "texture_hits": 0,
                "neither": 2,
                "conflicts": 2,
                "texture_figure": None,
            }
        ],
        "figures": {"shape_bias": "shape_bias.png"},
    }
    (tmp_path / "shape_bias.json").write_text(json.dumps(result))
    html = render_shape_bias(AnalysisFolder(tmp_path, "shape_bias"))
    assert "<b>m" not in html and "&lt;b&gt;m" in html and "&lt;i&gt;f" in html
    assert "no hits" in html and "shape_bias.png is missing" in html


# --- the summary ------------------------------------------------------------------------------


def test_headline_and_verdict_read_shape_bias_json():
    # Numbers and the sentence as the report's analysis summary gave them before the registry.
    result = {
        "models": [
            {"label": "cnn", "shape_bias": 0.25},
            {"label": "<vit>", "shape_bias": 0.75},
            {"label": "no hits", "shape_bias": None},
            {"label": "text", "shape_bias": "0.5"},
            {"label": "flag", "shape_bias": True},
            {"label": "whole", "shape_bias": 1},
            "not a model",
            {"label": "tie", "shape_bias": 0.25},
        ]
    }
    headline = shape_bias_headline(result)
    assert list(headline) == ["cnn", "<vit>", "no hits", "text", "flag", "whole", "tie"]
    assert headline["cnn"] == {"shape_bias": 0.25} and headline["whole"] == {"shape_bias": 1.0}
    assert all(math.isnan(headline[m]["shape_bias"]) for m in ("no hits", "text", "flag"))
    assert shape_bias_verdict(result) == (
        "Shape bias on cue-conflict images (1 = decides by shape, 0 = by texture): "
        "whole 1.00, <vit> 0.75, cnn 0.25, tie 0.25."
    )
    nothing = {"models": [{"label": "cnn", "shape_bias": None}]}
    assert math.isnan(shape_bias_headline(nothing)["cnn"]["shape_bias"])
    assert shape_bias_verdict(nothing) is None
    assert shape_bias_headline({"models": 3}) == {} and shape_bias_verdict({}) is None
