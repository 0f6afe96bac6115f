"""Decoding image files into RGB uint8 pixels: the one place that decides what a pixel is.

Policy (every image file in cnnvit goes through :func:`decode_rgb`):

- EXIF orientation is applied first (``PIL.ImageOps.exif_transpose``), so a photo taken on its
  side is seen the way a viewer shows it.
- Grayscale becomes RGB by replicating the channel. 8-bit modes (``1``, ``L``) convert directly.
  16-bit modes (``I;16*``) are scaled with ``round(v / 257)``, which maps 0..65535 exactly onto
  0..255 (no clipping). Mode ``I`` (32-bit int; Pillow also uses it for some 16-bit files) is
  scaled the same way when its values lie in 0..65535, otherwise min-max stretched to 0..255.
  Mode ``F`` (float) is taken as 0..1 when its values lie there, otherwise min-max stretched.
- Any alpha channel (``RGBA``, ``LA``, ``PA``, and palette ``P`` images with a transparency
  entry, which go through ``RGBA``) is composited over a white background: a transparent pixel
  becomes white, as a browser would show it on a white page. ``P`` without transparency is
  plain RGB.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and other colour modes convert to RGB through Pillow.
- Nothing is guessed for broken files: truncated images raise (``LOAD_TRUNCATED_IMAGES`` is
  never set), as do empty files and files that are not images. Every failure is an
  :class:`ImageDecodeError` with the path and a short human reason, so callers can skip the
  file and name it.

:func:`load_uint8` resizes to a square (shorter side to ``size``, bilinear with antialiasing,
then a center crop), :func:`materialize` decodes a whole :class:`FileSource` into memory with a
thread pool, and :class:`FileImageDataset` with :func:`collate_skipping` streams files through a
``DataLoader`` while reporting, not crashing on, bad files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.progress import Progress
from torchvision.transforms import InterpolationMode

from cnnvit.data.types import ArraySource, DataError, FileSource, SkippedFile

# How many bad files a warning names before it points at the returned list instead.
_MAX_NAMED = 20


class ImageDecodeError(DataError):
    """An image file that cannot be decoded; ``reason`` is short and human ("truncated file")."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot decode {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def decode_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to an RGB image following the module's policy."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(path, "empty file")
        with Image.open(path) as img:
            img.load()  # decode now, inside the try, so truncation surfaces here
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as err:
        raise ImageDecodeError(path, "not an image") from err
    except FileNotFoundError as err:
        raise ImageDecodeError(path, "missing file") from err
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(path, "image too large (decompression bomb guard)") from err
    except (OSError, SyntaxError, EOFError, ValueError) as err:
        raise ImageDecodeError(path, _reason(err)) from err


def _reason(err: BaseException) -> str:
    """A short reason for a Pillow failure; Pillow's messages vary by format."""
    text = str(err).lower()
    if "truncat" in text or isinstance(err, EOFError):
        return "truncated file"
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"corrupt image ({str(err) or type(err).__name__})"


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("1", "L"):
        return img.convert("RGB")
    if mode.startswith("I") or mode.startswith("F"):
        grey = _scale_to_uint8(np.asarray(img))  # (H, W) uint8, which Pillow reads as mode L
        return Image.fromarray(grey).convert("RGB")
    if mode == "P":
        # A palette with a transparency entry may hide pixels; composite them like alpha.
        if "transparency" in img.info:
            return _over_white(img.convert("RGBA"))
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _over_white(img.convert("RGBA"))
    # CMYK, YCbCr, LAB, HSV, RGBX: Pillow knows the colour conversion.
    return img.convert("RGB")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth or float single-channel array to uint8, keeping its full range."""
    if values.dtype.kind == "f":
        v = values.astype(np.float64)
        if np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1:
            return np.rint(v * 255).astype(np.uint8)
        return _stretch(np.nan_to_num(v))
    v = values.astype(np.int64)
    if v.min() >= 0 and v.max() <= 65535:
        # 257 = 65535 / 255 exactly, so 0 -> 0 and 65535 -> 255.
        return np.rint(v / 257).astype(np.uint8)
    return _stretch(v.astype(np.float64))


def _stretch(v: np.ndarray) -> np.ndarray:
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.rint((v - lo) * (255 / (hi - lo))).astype(np.uint8)


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def load_uint8(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` to (size, size, 3) uint8: shorter side resized to ``size``, center crop."""
    img = decode_rgb(path)
    img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    img = TF.center_crop(img, [size, size])
    return np.array(img, dtype=np.uint8)  # (size, size, 3); a writable copy, as torch wants


def materialize(
    source: FileSource, size: int, *, workers: int = 2, progress: bool = True
) -> tuple[ArraySource, list[SkippedFile]]:
    """Decode every file of ``source`` into one in-memory array; bad files are dropped and named."""
    n = len(source)
    images = np.empty((n, size, size, 3), np.uint8)  # (N, S, S, 3)
    ok = np.zeros(n, bool)

    def work(i: int) -> None:
        images[i] = load_uint8(source.paths[i], size)
        ok[i] = True

    bad = _run_all(work, n, workers, progress)
    if n and not ok.any():
        raise DataError(f"none of the {n} images could be decoded: {_describe(bad)}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {_describe(bad)}", stacklevel=2)
        images = images[ok]  # (N - bad, S, S, 3); the copy is only paid when files were bad
    return ArraySource(images, np.asarray(source.labels, np.int64)[ok]), bad


def _run_all(
    work: Callable[[int], None], n: int, workers: int, progress: bool
) -> list[SkippedFile]:
    """Call ``work(i)`` for every index on a thread pool; collect decode failures in index order."""
    skipped: dict[int, SkippedFile] = {}
    # Pillow releases the GIL while decoding and resizing, so threads decode in parallel.
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        with _progress_bar(progress) as bar:
            task = bar.add_task(f"decoding {n} images", total=n) if bar else None
            futures = {pool.submit(work, i): i for i in range(n)}
            for future in as_completed(futures):
                err = future.exception()
                if isinstance(err, ImageDecodeError):
                    skipped[futures[future]] = SkippedFile(err.path, err.reason)
                elif err is not None:
                    raise err  # not a bad file but a bug or out of memory: stop everything
                if bar is not None:
                    bar.advance(task)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [skipped[i] for i in sorted(skipped)]


def _describe(bad: list[SkippedFile]) -> str:
    named = "; ".join(f"{s.path} ({s.reason})" for s in bad[:_MAX_NAMED])
    more = len(bad) - _MAX_NAMED
    return named + (f"; and {more} more (see the returned list)" if more > 0 else "")


def _progress_bar(enabled: bool) -> AbstractContextManager[Progress | None]:
    # transient: the bar disappears when done, leaving the log readable.
    return Progress(transient=True) if enabled else nullcontext()


class FileImageDataset(torch.utils.data.Dataset):
    """Image files decoded one by one (in DataLoader workers) to uint8 (3, size, size) tensors.

    A file that fails to decode yields ``(zeros, -1, "path\\treason")`` instead of raising, so one
    bad file does not kill a worker; :func:`collate_skipping` drops it and reports it.
    """

    def __init__(self, source: FileSource, size: int) -> None:
        self.source = source
        self.size = size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        path = self.source.paths[i]
        try:
            pixels = load_uint8(path, self.size)  # (S, S, 3)
        except ImageDecodeError as err:
            blank = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
            return blank, -1, f"{path}\t{err.reason}"
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, S, S)
        return image, int(self.source.labels[i]), ""


def collate_skipping(
    batch: list[tuple[torch.Tensor, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]]:
    """Stack the decoded samples of a batch and report the failed ones as SkippedFile."""
    good = [(img, label) for img, label, err in batch if not err]
    skipped = [SkippedFile(*err.rsplit("\t", 1)) for _, _, err in batch if err]
    if good:
        images = torch.stack([img for img, _ in good])  # (B, 3, S, S)
    else:
        images = batch[0][0].new_zeros((0, *batch[0][0].shape)) if batch else torch.zeros(0)
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)  # (B,)
    return images, labels, skipped
