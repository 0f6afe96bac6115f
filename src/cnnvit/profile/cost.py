"""What a model costs before it runs: parameters, size on disk, forward FLOPs and MACs.

FLOPs come from torch's own counter, :class:`torch.utils.flop_counter.FlopCounterMode`, over one
forward pass at batch 1 in eval mode. It counts the matrix products only: convolutions, linear
layers (``addmm``/``mm``), batched products (``bmm``/``baddbmm``) and attention
(``scaled_dot_product_attention`` in every fused variant: flash, memory-efficient, cuDNN and the
CPU kernel, plus flex attention), two FLOPs per multiply-add. Normalisation, activations,
softmax, pooling and additions are not counted, which is the convention behind the published
figures (ResNet-50 4.1 GMACs, ViT-B/16 17.6 GMACs at 224 px). MACs are therefore exactly half
the counted FLOPs; ``flops_by_op`` names the aten ops that were counted and their share.

Size on disk is the safetensors file of the model's state dict (parameters and buffers, as
cnnvit's checkpoints store them), in bytes and MB (10**6 bytes).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from cnnvit.models.surgery import count_parameters
from cnnvit.profile.record import Cost
from cnnvit.train.checkpoint import model_state

__all__ = [
    "FlopCount",
    "count_flops",
    "measure_cost",
    "save_weights",
]


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one image, and the aten ops they were counted from."""

    flops: int
    by_op: dict[str, int]  # aten op name -> FLOPs

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_flops(
    model: nn.Module, image_size: int | tuple[int, int], in_chans: int = 3
) -> FlopCount:
    """Forward FLOPs of ``model`` on one ``in_chans`` x ``image_size`` image.

    The model runs once, in eval mode and without gradients, on its own device (the meta device
    works too: no memory, no compute); its train/eval mode is restored afterwards. A compiled
    model is counted through the module it wraps.
    """
    model = getattr(model, "_orig_mod", model)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, in_chans, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items() if n}
    return FlopCount(flops=int(counter.get_total_flops()), by_op=by_op)


def save_weights(model: nn.Module, path: str | Path) -> int:
    """Write the model's state dict as safetensors (as cnnvit's checkpoints do); its bytes."""
    path = Path(path)
    save_file(model_state(model), path)
    return path.stat().st_size


def measure_cost(
    model: nn.Module, image_size: int, in_chans: int = 3, *, disk_bytes: int | None = None
) -> Cost:
    """Parameters, size on disk and forward FLOPs/MACs of ``model`` at ``image_size``.

    ``disk_bytes``: the size of a safetensors file of this model already written (by
    :func:`save_weights`); otherwise one is written to a temporary folder and measured.
    """
    total, trainable = count_parameters(model)
    disk = disk_bytes
    if disk is None:
        with tempfile.TemporaryDirectory(prefix="cnnvit-profile-") as tmp:
            disk = save_weights(model, Path(tmp) / "model.safetensors")
    flops = count_flops(model, image_size, in_chans)
    return Cost(
        params_total=total,
        params_trainable=trainable,
        disk_bytes=disk,
        image_size=image_size,
        in_chans=in_chans,
        flops=flops.flops,
        macs=flops.macs,
        flops_by_op=flops.by_op,
    )
