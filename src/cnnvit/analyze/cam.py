"""Grad-CAM at every depth: where each layer's evidence for a class lies in the image.

The CAM methods are pytorch-grad-cam's (GradCAM, GradCAM++, ScoreCAM, EigenCAM, LayerCAM); this
module only chooses the layers, feeds the batch and overlays the maps on the images. Layers: a
CNN's stage outputs (timm ``feature_info``) or every residual block; a ViT's blocks, each hooked
at its ``norm1`` (the norm before attention: pytorch-grad-cam's documented choice, whose
gradients are non-zero at every patch token, unlike the final norm, whose only gradient reaches
the class token), the tokens laid out on the grid read from the model (:func:`token_layout`:
any patch size, image size, class/distillation/register tokens). A hybrid gives its conv block,
then every ViT block. Numbers and pictures (arrays) only: :mod:`cnnvit.analyze.analyses.gradcam`
draws the figures and writes the files.

All layers of a model come from ONE forward and backward pass (pytorch-grad-cam pairs each
layer's activations and gradients in forward order); the maps are taken per layer instead of
averaged, by overriding ``aggregate_multi_layers`` only.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cnnvit.analyze.grids import grid_sample, model_view
from cnnvit.analyze.hooks import LayerRecorder, named_module, preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.layers import (
    TokenLayout,
    block_layers,
    resolve_layers,
    token_layout,
    transformer_of,
)
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "BATCH_SIZE",
    "CAM_METHODS",
    "CamLayer",
    "CamResult",
    "CamRun",
    "GridCams",
    "PredictionCams",
    "cam_area",
    "cam_layers",
    "compute_cams",
    "grid_cams",
    "input_pictures",
    "method_class",
    "overlay",
    "prediction_cams",
]

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
}
TARGETS = ("label", "predicted")
BATCH_SIZE = 16  # images per CAM pass: activations and gradients of every layer are kept
SCORECAM_BATCH = 32  # masked copies of an image per ScoreCAM forward pass
OVERLAY_WEIGHT = 0.5  # share of the input image in an overlay (the rest is the jet heatmap)


# --- layers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrid:
    """pytorch-grad-cam's ``reshape_transform`` for ViT tokens: (B, N, C) -> (B, C, rows, cols),
    prefix tokens dropped, the grid from the model; (B, C, H, W) maps (a hybrid's conv block)
    pass through, so one transform serves every layer of a model."""

    layout: TokenLayout

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim == 4:
            return tensor
        return self.layout.to_map(tensor)  # (B, C, rows, cols)


@dataclass(frozen=True)
class CamLayer:
    """One depth to explain: ``label`` shown in figures, ``name`` of the hooked ``module``,
    and the ``reshape`` that turns its output into (B, C, h, w) (None for a CNN)."""

    label: str
    name: str
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None


def cam_layers(model: nn.Module, layers: str | Sequence[str] = "stages") -> list[CamLayer]:
    """The layers to take CAMs at, shallow to deep.

    CNN: ``"stages"`` (feature_info), ``"blocks"`` (every residual block), ``"convs"``,
    ``"all"`` or module names. ViT: ``"stages"`` and ``"blocks"`` both mean every transformer
    block, hooked at its ``norm1``; a hybrid's conv block comes first. A ViT block named
    explicitly (``"blocks.3"``) is hooked at its ``norm1`` too; other names as they are.
    """
    vit = transformer_of(model)
    if vit is None:
        return [CamLayer(n, n, named_module(model, n)) for n in resolve_layers(model, layers)]
    layout = token_layout(model)
    assert layout is not None  # a model with a transformer has a token layout
    reshape = TokenGrid(layout)
    names = block_layers(model) if layers in ("stages", "blocks") else resolve_layers(model, layers)
    block_index = {id(block): i for i, block in enumerate(vit.blocks)}
    out = []
    for name in names:
        module = named_module(model, name)
        index = block_index.get(id(module))
        if index is not None and hasattr(module, "norm1"):
            out.append(CamLayer(f"block {index}", f"{name}.norm1", module.norm1, reshape))
        else:
            out.append(CamLayer(name, name, module, reshape))
    return out


# --- CAMs ----------------------------------------------------------------------------------


@dataclass
class CamResult:
    """``maps`` float32 (L, B, H, W) in [0, 1] at the subject's input size, one per layer
    (each min-max scaled per image by pytorch-grad-cam; all zeros where the CAM is empty);
    ``predicted`` (B,) class indices, ``confidence`` (B,) softmax of the predicted class,
    ``targets`` (B,) the classes explained; ``layers`` labels and ``modules`` hooked names."""

    maps: np.ndarray
    layers: list[str]
    modules: list[str]
    predicted: np.ndarray
    confidence: np.ndarray
    targets: np.ndarray


def method_class(method: str) -> type:
    """The pytorch-grad-cam class for ``method``; an unknown name lists the known ones."""
    if method not in CAM_METHODS:
        raise ValueError(
            f"unknown CAM method {method!r}: use one of {', '.join(sorted(CAM_METHODS))}"
        )
    return CAM_METHODS[method]


def compute_cams(
    subject: Subject,
    images_uint8: torch.Tensor,
    *,
    method: str = "gradcam",
    layers: str | Sequence[str] = "stages",
    target: str = "label",
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
) -> CamResult:
    """CAMs of ``images_uint8`` (B, C, H, W) at every layer of ``layers``, explaining the class
    ``labels`` (``target="label"``) or the model's prediction (``"predicted"``), in one batch."""
    cls = method_class(method)
    if target not in TARGETS:
        raise ValueError(f"unknown CAM target {target!r}: use 'label' or 'predicted'")
    if target == "label" and labels is None:
        raise ValueError("target='label' needs labels=; pass them or use target='predicted'")
    wanted = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if wanted is not None and len(wanted) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(wanted)} labels")
    out_of_range = wanted is not None and ((wanted < 0) | (wanted >= len(subject.classes))).any()
    if target == "label" and out_of_range:
        raise ValueError(
            f"labels must be class indices below {len(subject.classes)} for {subject.label}; "
            "images from another dataset need target='predicted'"
        )
    chosen = cam_layers(subject.model, layers)
    if not chosen:
        raise ValueError(f"no layers to explain for {layers!r}; name module(s) explicitly")
    return _cams(subject, images_uint8, cls, chosen, wanted if target == "label" else None)


def _cams(
    subject: Subject,
    images_uint8: torch.Tensor,
    cls: type,
    chosen: list[CamLayer],
    wanted: np.ndarray | None,
) -> CamResult:
    """One pytorch-grad-cam pass over ``chosen`` (wanted=None: explain the prediction)."""
    model = subject.model
    reshape = next((c.reshape for c in chosen if c.reshape is not None), None)
    # a caller's no_grad / inference_mode would leave nothing to backpropagate
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        preserved(model),
        _grads_kept(model),
        _quiet(cls),
    ):
        # Gradients flow from the input instead of the parameters: frozen models work, and no
        # parameter .grad is written (preserved() puts requires_grad back).
        for p in model.parameters():
            p.requires_grad_(False)
        x = subject.prepare(images_uint8).float().requires_grad_(True)  # (B, C, S, S)
        cam = _per_layer(cls)(
            model=model, target_layers=[c.module for c in chosen], reshape_transform=reshape
        )
        cam.batch_size = SCORECAM_BATCH  # read by ScoreCAM only
        try:
            with LayerRecorder(model, [c.name for c in chosen], _nothing) as order:
                targets = (
                    None if wanted is None else [ClassifierOutputTarget(int(k)) for k in wanted]
                )
                stacked = cam(input_tensor=x, targets=targets)  # (B, L, S, S) in firing order
            logits = cam.outputs.detach().float().cpu()  # (B, K)
        finally:
            cam.activations_and_grads.release()
    # pytorch-grad-cam returns layers in the order they ran; put them in the order asked.
    fired = list(order.outputs)
    maps = np.stack([stacked[:, fired.index(c.name)] for c in chosen])  # (L, B, S, S)
    probs = logits.softmax(dim=1)
    predicted = logits.argmax(dim=1).numpy()
    return CamResult(
        maps=np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0).astype(np.float32),
        layers=[c.label for c in chosen],
        modules=[c.name for c in chosen],
        predicted=predicted,
        confidence=probs[torch.arange(len(predicted)), predicted].numpy(),
        targets=predicted if wanted is None else wanted,
    )


def _nothing(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.new_empty(0)  # the recorder is only asked which layers ran, in what order


@functools.cache
def _per_layer(cls: type) -> type:
    """``cls`` returning every layer's map (B, L, H, W) instead of their mean, after checking
    that each layer ran once and got a gradient (else activations and gradients would pair up
    wrongly)."""

    class PerLayer(cls):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            store = self.activations_and_grads
            count = len(self.target_layers)
            if len(store.activations) != count:
                raise ValueError(
                    f"{len(store.activations)} activations for {count} layers: a layer runs more "
                    "than once (or never) in the forward pass; choose other layers"
                )
            if self.uses_gradients and len(store.gradients) != count:
                raise ValueError(
                    f"only {len(store.gradients)} of {count} layers received a gradient: a layer "
                    "is not on the path to the output; choose other layers"
                )
            return super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)

        def aggregate_multi_layers(self, cam_per_target_layer):
            return np.concatenate(cam_per_target_layer, axis=1)  # (B, L, H, W)

    PerLayer.__name__ = f"PerLayer{cls.__name__}"
    return PerLayer


@contextlib.contextmanager
def _grads_kept(model: nn.Module) -> Iterator[None]:
    """pytorch-grad-cam calls ``model.zero_grad()``, which drops every parameter's .grad: put
    them back (preserved() does not keep .grad)."""
    grads = {p: p.grad for p in model.parameters()}
    try:
        yield
    finally:
        for p, grad in grads.items():
            p.grad = grad


@contextlib.contextmanager
def _quiet(cls: type) -> Iterator[None]:
    """ScoreCAM draws a tqdm bar per image on stderr; keep it off the terminal."""
    if cls is not ScoreCAM:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# --- numbers -------------------------------------------------------------------------------


def cam_area(maps: np.ndarray) -> np.ndarray:
    """Fraction of each map's pixels at or above half its maximum, (..., H, W) -> (...); NaN for
    an empty (all-zero) map. Small: the evidence is local; large: it is spread over the image."""
    peak = maps.max(axis=(-2, -1), keepdims=True)
    area = (maps >= 0.5 * peak).mean(axis=(-2, -1))
    return np.where(peak[..., 0, 0] > 0, area, np.nan)


# --- the analysis: every model's CAMs of the same images ---------------------------------------


@dataclass
class GridCams:
    """One model's CAMs of a grid's images at every depth, and the pictures its grid shows."""

    layers: list[str]  # labels of the depths, shallow to deep
    modules: list[str]  # the hooked modules
    predicted: np.ndarray  # (N,) class indices
    targets: np.ndarray  # (N,) the classes explained
    areas: np.ndarray  # (L, N) float64: each map's cam_area, NaN for an empty map
    inputs: np.ndarray  # (N, S, S, 3) float32 in [0, 1]: what the model sees
    overlays: np.ndarray  # (L, N, S, S, 3) uint8: each layer's CAM over the input
    seconds: float  # computing the CAMs


@dataclass
class CamRun:
    """Every model's CAMs of the same stratified images."""

    indices: np.ndarray  # (N,) the grid's images among those given
    labels: np.ndarray  # (N,) their classes
    models: list[GridCams]


def grid_cams(
    subjects: Sequence[Subject],
    images: ImageSet,
    *,
    num_images: int = 8,
    method: str = "gradcam",
    layers: str | Sequence[str] = "stages",
    target: str = "label",
    progress: bool = True,
) -> CamRun:
    """CAMs of ``num_images`` stratified images of ``images`` at every depth of each subject,
    in batches of :data:`BATCH_SIZE`, with each map's area and its overlay on the input."""
    method_class(method)
    if target not in TARGETS:
        raise ValueError(f"unknown CAM target {target!r}: use 'label' or 'predicted'")
    indices, sample = grid_sample(images, num_images)
    models = []
    with progress_bar(progress) as bar:
        task = None if bar is None else bar.add_task("grad-cam", total=len(subjects), rate="")
        for subject in subjects:
            start = time.perf_counter()
            result = _batched_cams(subject, sample, method, layers, target)
            seconds = time.perf_counter() - start
            rgb = model_view(subject, sample.images)  # (N, S, S, 3)
            pictures = [[overlay(rgb[r], m[r]) for r in range(len(rgb))] for m in result.maps]
            models.append(
                GridCams(
                    layers=result.layers,
                    modules=result.modules,
                    predicted=result.predicted,
                    targets=result.targets,
                    areas=cam_area(result.maps),  # (L, N)
                    inputs=rgb,
                    overlays=np.asarray(pictures, dtype=np.uint8),  # (L, N, S, S, 3)
                    seconds=seconds,
                )
            )
            if bar is not None:
                bar.update(task, advance=1, rate=subject.label)
    return CamRun(indices, sample.labels.numpy(), models)


def _batched_cams(
    subject: Subject, sample: ImageSet, method: str, layers: str | Sequence[str], target: str
) -> CamResult:
    parts = [
        compute_cams(subject, batch, method=method, layers=layers, target=target, labels=labels)
        for batch, labels in sample.batches(BATCH_SIZE)
    ]
    first = parts[0]
    return CamResult(
        maps=np.concatenate([p.maps for p in parts], axis=1),  # (L, N, S, S)
        layers=first.layers,
        modules=first.modules,
        predicted=np.concatenate([p.predicted for p in parts]),
        confidence=np.concatenate([p.confidence for p in parts]),
        targets=np.concatenate([p.targets for p in parts]),
    )


def overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The CAM (S, S) in jet over the image (S, S, 3), pytorch-grad-cam's ``show_cam_on_image``:
    uint8 (S, S, 3)."""
    return show_cam_on_image(rgb.astype(np.float32), cam, use_rgb=True, image_weight=OVERLAY_WEIGHT)


# --- cnnvit classify --cam: each model's CAM for its own prediction ----------------------------


@dataclass
class PredictionCams:
    """A model's CAM of each image at its last layer, for the class it predicts."""

    predicted: np.ndarray  # (B,) class indices
    confidence: np.ndarray  # (B,) softmax of the predicted class
    overlays: np.ndarray  # (B, S, S, 3) uint8: the CAM over what the model sees


def prediction_cams(
    subject: Subject, images_uint8: torch.Tensor, *, method: str = "gradcam"
) -> PredictionCams:
    """CAMs of uint8 ``images_uint8`` (B, C, H, W) at the subject's last stage (a ViT's last
    block), each for the class the model predicts, in one batch."""
    cls = method_class(method)
    last = cam_layers(subject.model, "stages")[-1:]
    result = _cams(subject, images_uint8, cls, last, None)
    rgb = model_view(subject, images_uint8)  # (B, S, S, 3)
    pictures = [overlay(rgb[r], result.maps[0, r]) for r in range(len(rgb))]
    return PredictionCams(
        predicted=result.predicted,
        confidence=result.confidence,
        overlays=np.asarray(pictures, dtype=np.uint8),  # (B, S, S, 3)
    )


def input_pictures(images_uint8: torch.Tensor) -> np.ndarray:
    """uint8 (B, C, H, W) -> uint8 (B, H, W, 3) for pictures, grey images repeated to RGB."""
    pictures = images_uint8.permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    return np.repeat(pictures, 3, axis=3) if pictures.shape[3] == 1 else pictures[..., :3]
