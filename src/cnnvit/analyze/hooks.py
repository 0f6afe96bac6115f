"""Owned forward hooks: registered on entry, removed on exit, whatever happens in between.

An analysis never edits a model. It records what named modules output through a
:class:`LayerRecorder`, and anything it has to switch for the pass (training mode, fused
attention, ``requires_grad``) is switched inside :func:`preserved`, which puts it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["LayerRecorder", "first_tensor", "named_module", "preserved"]


def first_tensor(output: object) -> torch.Tensor:
    """A module's output as one tensor: itself, or the first tensor of a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(output, dict):
        for item in output.values():
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor")


def named_module(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule ``name``; an unknown name lists some that exist."""
    modules = dict(model.named_modules())
    if name not in modules:
        some = ", ".join(n for n in list(modules)[1:13] if n)
        raise KeyError(f"the model has no module {name!r} (it has {some}, ...)")
    return modules[name]


class LayerRecorder:
    """Keeps the output of each named module from the forward passes run inside ``with``.

    ``transform`` turns an output into what is kept (say, a channel mean, to bound memory); by
    default the detached tensor itself. ``outputs[name]`` holds the last pass's value, in the
    order the names were given. Hooks are removed on exit, even after an exception::

        with LayerRecorder(model, ["layer1", "layer2"]) as rec:
            model(x)
        rec.outputs["layer1"]  # (B, C, H, W)
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.names = list(names)
        self.transform = transform or (lambda t: t.detach())
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerRecorder:
        for name in self.names:
            module = named_module(self.model, name)
            self._handles.append(module.register_forward_hook(self._keeper(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.outputs.clear()

    def ordered(self) -> list[torch.Tensor]:
        """The kept outputs in the order of ``names`` (a name that never ran raises)."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"modules {missing} did not run in the forward pass")
        return [self.outputs[n] for n in self.names]

    def _keeper(self, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            self.outputs[name] = self.transform(first_tensor(output))

        return hook


@contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Run an analysis on ``model`` and put back what analyses switch: train/eval mode of every
    module, ``requires_grad`` and ``.grad`` of every parameter (a CAM's backward pass zeroes and
    fills them), and timm's ``fused_attn`` flags."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    stored = {p: p.grad for p in model.parameters()}
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in grads.items():
            p.requires_grad_(flag)
            p.grad = stored[p]
        for m, flag in fused.items():
            m.fused_attn = flag
