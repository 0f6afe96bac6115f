"""Mixup and CutMix: label mass, the mixed pixels, lam after box clipping, reproducibility."""

import pytest
import torch

from cnnvit.config import AugmentConfig
from cnnvit.data.mix import BatchMix
from cnnvit.train.loop import make_loss

C = 5


def _batch(b: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, 12, 10, generator=g)
    labels = torch.randint(0, C, (b,), generator=g)
    return x, labels


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_off_unless_an_alpha_is_set():
    assert BatchMix.from_config(AugmentConfig(), C, 0.1) is None
    assert BatchMix.from_config(None, C, 0.1) is None
    assert BatchMix.from_config(AugmentConfig(mixup_alpha=0.8, mix_prob=0.0), C, 0.0) is None
    mix = BatchMix.from_config(AugmentConfig(cutmix_alpha=1.0), C, 0.1)
    assert mix is not None and mix.cutmix_alpha == 1.0 and mix.label_smoothing == 0.1


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_is_the_convex_combination_and_targets_match_timm(smoothing: float):
    from timm.data.mixup import mixup_target

    x, labels = _batch()
    out = BatchMix(num_classes=C, mixup_alpha=0.8, label_smoothing=smoothing)(x, labels, _gen())
    lam = out.lam.view(-1, 1, 1, 1)
    assert torch.allclose(out.images, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert ((out.lam > 0) & (out.lam < 1)).any()
    assert torch.allclose(out.targets.sum(1), torch.ones(len(x)), atol=1e-6)
    for i in range(len(x)):  # row by row: timm's target with this sample's lam
        lam_i = out.lam[i].item()
        expected = mixup_target(labels, C, lam=lam_i, smoothing=smoothing)[i]
        assert torch.allclose(out.targets[i], expected, atol=1e-6)


def test_cutmix_pastes_one_box_whose_area_is_one_minus_lam():
    x, labels = _batch()
    out = BatchMix(num_classes=C, cutmix_alpha=1.0)(x, labels, _gen())
    h, w = x.shape[-2:]
    partner = x.flip(0)
    for i in range(len(x)):
        from_partner = (out.images[i] == partner[i]).all(0) & (partner[i] != x[i]).any(0)
        from_self = (out.images[i] == x[i]).all(0)
        assert (from_partner | from_self).all()  # every pixel is one image's, never blended
        rows, cols = from_partner.nonzero(as_tuple=True)
        if len(rows):  # the pasted pixels fill their bounding box: one rectangle
            box = from_partner[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()
        # lam is corrected for box clipping: the image's own share of the pixels
        assert out.lam[i].item() == pytest.approx(1 - from_partner.sum().item() / (h * w))
    assert (out.lam < 1).any()
    assert torch.allclose(out.targets.sum(1), torch.ones(len(x)), atol=1e-6)


def test_dominant_label_is_the_larger_weight():
    x, labels = _batch()
    out = BatchMix(num_classes=C, mixup_alpha=1.0)(x, labels, _gen())
    expected = torch.where(out.lam >= 0.5, labels, labels.flip(0))
    assert torch.equal(out.dominant, expected)


def test_mix_prob_zero_leaves_everything_untouched_and_both_modes_are_used():
    x, labels = _batch()
    out = BatchMix(num_classes=C, mixup_alpha=1.0, mix_prob=0.0)(x, labels, _gen())
    assert torch.equal(out.images, x) and (out.lam == 1).all()
    assert torch.equal(out.targets.argmax(1), labels)
    x, labels = _batch(64)
    both = BatchMix(num_classes=C, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    out = both(x, labels, _gen())
    whole_pixels = ((out.images == x) | (out.images == x.flip(0))).all(1).all(1).all(1)  # (B,)
    assert (~whole_pixels).any()  # some mixup: blended pixels
    assert (whole_pixels & (out.lam < 1)).any()  # some cutmix: a pasted box, no blending


def test_reproducible_from_the_generator_and_advances_it():
    x, labels = _batch()
    mix = BatchMix(num_classes=C, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    g1, g2 = _gen(3), _gen(3)
    a, b = mix(x, labels, g1), mix(x, labels, g2)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    c = mix(x, labels, g1)  # the generator moved on: a new draw
    assert not torch.equal(a.lam, c.lam)


def test_loss_takes_soft_targets_without_smoothing_twice():
    logits = torch.randn(4, C)
    labels = torch.tensor([0, 1, 2, 3])
    loss_fn = make_loss(0.1)
    soft = BatchMix(num_classes=C, mixup_alpha=1.0, mix_prob=0.0, label_smoothing=0.1)
    targets = soft(torch.zeros(4, 1, 2, 2), labels, _gen()).targets
    # unmixed soft targets with the smoothing folded in == hard labels smoothed by the loss
    assert loss_fn(logits, targets).item() == pytest.approx(loss_fn(logits, labels).item())
