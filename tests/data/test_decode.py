"""Decoding policy on odd real files, materialize, and streaming with bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cnnvit.data.decode import (
    FileImageDataset,
    ImageDecodeError,
    collate_skipping,
    decode_rgb,
    load_uint8,
    materialize,
)
from cnnvit.data.readers.folder import image_folder
from cnnvit.data.types import DataError, FileSource

WHITE = (255, 255, 255)


def _solid(path: Path, mode: str, colour: object, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _noise_jpeg(path: Path, keep: float = 1.0) -> Path:
    """A 64x64 noisy JPEG, cut to the first ``keep`` fraction of its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _pixel(path: Path) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(decode_rgb(path))[0, 0])


def test_grayscale_replicated(tmp_path: Path) -> None:
    img = decode_rgb(_solid(tmp_path / "g.png", "L", 100))
    assert img.mode == "RGB"
    assert _pixel(tmp_path / "g.png") == (100, 100, 100)
    assert _pixel(_solid(tmp_path / "b.png", "1", 1)) == WHITE


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 25700, 32896, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    rgb = np.asarray(decode_rgb(path))  # (1, 5, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 100, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_32bit_and_float_modes(tmp_path: Path) -> None:
    # Mode I beyond 16 bits is stretched over its own range rather than clipped to white.
    wide = Image.fromarray(np.array([[0, 100_000, 200_000]], np.int32), mode="I")
    wide.save(tmp_path / "i.tif")
    assert np.asarray(decode_rgb(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F")
    unit.save(tmp_path / "f.tif")
    assert np.asarray(decode_rgb(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_composited_over_white(tmp_path: Path) -> None:
    assert _pixel(_solid(tmp_path / "clear.png", "RGBA", (255, 0, 0, 0))) == WHITE
    assert _pixel(_solid(tmp_path / "opaque.png", "RGBA", (255, 0, 0, 255))) == (255, 0, 0)
    half = _pixel(_solid(tmp_path / "half.png", "RGBA", (0, 0, 0, 128)))
    assert all(abs(v - 127) <= 1 for v in half)
    assert _pixel(_solid(tmp_path / "la.png", "LA", (0, 0))) == WHITE


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (6, 6), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, 1 blue
    img.save(tmp_path / "opaque.png")
    img.save(tmp_path / "clear.png", transparency=0)  # index 0 transparent
    assert _pixel(tmp_path / "opaque.png") == (255, 0, 0)
    assert _pixel(tmp_path / "clear.png") == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = _solid(tmp_path / "c.jpg", "CMYK", (0, 255, 0, 0))  # no magenta ink: ...
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    r, g, b = _pixel(path)
    assert r > 250 and g < 5 and b > 250  # ... is magenta on screen


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.new("RGB", (4, 2), (0, 255, 0)).save(tmp_path / "o.jpg", exif=exif)
    assert decode_rgb(tmp_path / "o.jpg").size == (2, 4)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not a picture\n", "not an image"),
    ],
)
def test_unreadable_files_raise(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(tmp_path / name)
    assert info.value.reason == reason
    assert info.value.path == str(tmp_path / name)
    assert isinstance(info.value, DataError)


def test_truncated_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="truncated file"):
        decode_rgb(_noise_jpeg(tmp_path / "t.jpg", keep=0.6))
    png = tmp_path / "t.png"
    Image.fromarray(np.asarray(decode_rgb(_noise_jpeg(tmp_path / "ok.jpg")))).save(png)
    png.write_bytes(png.read_bytes()[:-2000])
    with pytest.raises(ImageDecodeError, match="truncated file"):
        decode_rgb(png)


def test_load_uint8_resizes_shorter_side_and_crops(tmp_path: Path) -> None:
    # 40 x 20 image: 6 red columns on the left, rest blue. Shorter side 20 -> 10, width 40 -> 20,
    # then the 10 x 10 center crop (columns 5..14) keeps only blue.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :6] = (255, 0, 0)
    pixels[:, 6:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = load_uint8(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out == (0, 0, 255)).all()


def _odd_folder(root: Path) -> dict[str, Path]:
    """A class folder tree holding good, odd and broken images; returns the bad ones by reason."""
    _solid(root / "cats" / "gray.png", "L", 100)
    _solid(root / "cats" / "rgba_clear.png", "RGBA", (10, 20, 30, 0))
    _solid(root / "cats" / "cmyk.jpg", "CMYK", (0, 255, 0, 0))
    (root / "dogs").mkdir()
    Image.fromarray(np.full((8, 8), 25700, np.uint16)).save(root / "dogs" / "deep.png")
    img = Image.new("P", (6, 6), 0)
    img.putpalette([0, 255, 0] * 256)
    img.save(root / "dogs" / "palette.png", transparency=0)
    _solid(root / "dogs" / "red.PNG", "RGB", (200, 0, 0))  # upper-case extension counts
    _solid(root / "dogs" / ".hidden.png", "RGB", (1, 2, 3))  # hidden file: ignored
    _solid(root / "dogs" / ".thumbnails" / "t.png", "RGB", (1, 2, 3))  # hidden folder: ignored
    _solid(root / ".thumbnails" / "x" / "t.png", "RGB", (1, 2, 3))  # never a class
    (root / "dogs" / "notes.txt").write_text("not an image extension: ignored")
    bad = {
        "truncated file": _noise_jpeg(root / "cats" / "truncated.jpg", keep=0.5),
        "empty file": root / "dogs" / "empty.jpg",
        "not an image": root / "dogs" / "text.jpg",
    }
    bad["empty file"].write_bytes(b"")
    bad["not an image"].write_text("hello")
    return bad


def test_folder_with_odd_images_materializes(tmp_path: Path) -> None:
    bad = _odd_folder(tmp_path)
    splits = image_folder(tmp_path)
    assert splits.classes == ["cats", "dogs"]  # .thumbnails is not a class
    assert len(splits.train) == 9  # 4 cats + 5 dogs; hidden and .txt files excluded
    assert not any("thumbnails" in str(p) or ".hidden" in str(p) for p in splits.train.paths)

    with pytest.warns(UserWarning, match="skipped 3 unreadable") as record:
        arrays, skipped = materialize(splits.train, 8, workers=2, progress=False)
    message = str(record[0].message)
    assert all(str(path) in message for path in bad.values())
    assert {(s.path, s.reason) for s in skipped} == {(str(p), r) for r, p in bad.items()}
    assert arrays.images.shape == (6, 8, 8, 3)
    good = [p for p in splits.train.paths if p not in bad.values()]
    by_name = {p.name: i for i, p in enumerate(good)}
    expected = {
        "gray.png": (100, 100, 100),
        "rgba_clear.png": WHITE,
        "deep.png": (100, 100, 100),
        "palette.png": WHITE,
        "red.PNG": (200, 0, 0),
    }
    for name, colour in expected.items():
        assert (arrays.images[by_name[name]] == colour).all(), name
    assert arrays.labels.tolist() == [0, 0, 0, 1, 1, 1]  # labels stay aligned after drops


def test_materialize_with_progress_and_no_failures(tmp_path: Path) -> None:
    paths = [_solid(tmp_path / f"{i}.png", "RGB", (i, 0, 0)) for i in range(5)]
    source = FileSource(paths, np.arange(5, dtype=np.int64))
    arrays, skipped = materialize(source, 4, workers=1, progress=True)
    assert skipped == []
    assert arrays.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_materialize_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1 images"):
        materialize(FileSource([tmp_path / "a.jpg"], np.zeros(1, np.int64)), 4, progress=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_dataset_drops_and_reports_bad_files(tmp_path: Path, workers: int) -> None:
    bad = _odd_folder(tmp_path)
    source = image_folder(tmp_path).train
    loader = DataLoader(
        FileImageDataset(source, 8), batch_size=4, num_workers=workers, collate_fn=collate_skipping
    )
    images, labels, skipped = [], [], []
    for batch_images, batch_labels, batch_skipped in loader:
        assert batch_images.dtype == torch.uint8 and batch_images.shape[1:] == (3, 8, 8)
        assert batch_labels.dtype == torch.int64 and len(batch_labels) == len(batch_images)
        images.append(batch_images)
        labels.append(batch_labels)
        skipped += batch_skipped
    assert sorted((s.reason, s.path) for s in skipped) == sorted(
        (r, str(p)) for r, p in bad.items()
    )
    assert sum(len(x) for x in labels) == len(source) - 3
    assert (torch.cat(labels) >= 0).all()


def test_collate_skipping_all_failed() -> None:
    blank = torch.zeros(3, 4, 4, dtype=torch.uint8)
    images, labels, skipped = collate_skipping([(blank, -1, "a.jpg\tempty file")])
    assert images.shape == (0, 3, 4, 4) and labels.shape == (0,)
    assert skipped[0].path == "a.jpg" and skipped[0].reason == "empty file"
