import numpy as np
import pytest
import torch

from cnnvit.config import AugmentConfig
from cnnvit.data.augment import BatchTransform, random_crop, random_hflip, random_rotate


def _batch() -> torch.Tensor:
    return torch.randint(
        0, 256, (8, 3, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def test_eval_transform_normalises_exactly():
    t = BatchTransform(size=12, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x = _batch()
    expected = (x.float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.5]
    ).view(1, 3, 1, 1)
    assert torch.allclose(t(x), expected, atol=1e-6)


def test_grayscale_becomes_three_equal_channels_and_resized():
    t = BatchTransform(size=24, channels=3, mean=(0,) * 3, std=(1,) * 3)
    out = t(_batch()[:, :1])
    assert out.shape == (8, 3, 24, 24)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2)).numpy()
    for b in range(2):
        windows = [padded[b, 0, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(out[b, 0].numpy(), w) for w in windows)


def test_flip_flips_about_half_and_only_horizontally():
    x = torch.rand(400, 1, 3, 5)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped | same).all())
    assert 150 < int(flipped.sum()) < 250


def test_zero_rotation_is_identity_and_rotation_keeps_centre():
    x = torch.rand(4, 3, 9, 9)
    same = random_rotate(x, 1e-6, torch.Generator().manual_seed(0))
    assert torch.allclose(same, x, atol=1e-4)
    rotated = random_rotate(x, 30, torch.Generator().manual_seed(0))
    assert torch.allclose(rotated[..., 4, 4], x[..., 4, 4], atol=1e-4)


def test_training_transform_is_reproducible_from_the_generator():
    t = BatchTransform(
        size=12,
        channels=3,
        mean=(0,) * 3,
        std=(1,) * 3,
        augment=AugmentConfig(crop_padding=2, hflip=True, rotation_degrees=10),
    )
    a = t(_batch(), torch.Generator().manual_seed(5))
    b = t(_batch(), torch.Generator().manual_seed(5))
    c = t(_batch(), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="Generator"):
        t(_batch())
