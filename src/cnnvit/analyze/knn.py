"""How well a model's penultimate features serve as an embedding: k-nearest-neighbour retrieval.

The index is the training images' pre-logits features (``forward_head(forward_features(x),
pre_logits=True)``, timm's API), the queries the test images'. Features are compared by
cosine similarity (L2-normalised, inner product). Search is exact: a matrix product on the
subject's device in blocks of ``chunk`` queries x ``chunk`` index vectors with a running
``torch.topk``, so memory is bounded by ``chunk``^2 similarities whatever the index size (fine
up to a few hundred thousand vectors). When FAISS is importable (an optional extra, not a
dependency) an index larger than :data:`FAISS_MIN_INDEX` on the CPU is searched with its exact
``IndexFlatIP`` instead.

Scores per k: kNN classification accuracy (uniform majority vote of the k neighbours, a tie
going to the smallest class label, as scikit-learn's ``KNeighborsClassifier``) and recall@k
(the share of queries with at least one same-class neighbour among the k nearest); the model's
own head top-1 on the queries is the reference.

Numbers only: :mod:`cnnvit.analyze.analyses.knn` turns them into ``knn.json``, its table, plot
and report section.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnvit.analyze.hooks import preserved
from cnnvit.analyze.images import ImageSet
from cnnvit.analyze.subject import Subject
from cnnvit.ui import progress_bar

__all__ = [
    "DEFAULT_KS",
    "FAISS_MIN_INDEX",
    "KnnRun",
    "ModelScores",
    "embed",
    "knn_retrieval",
    "knn_scores",
]

DEFAULT_KS = (1, 5, 20)
# Below this, the chunked matrix product is as fast as FAISS's flat index and needs nothing.
FAISS_MIN_INDEX = 200_000


# --- features ------------------------------------------------------------------------------


def embed(
    subject: Subject, images: ImageSet, *, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """Pre-logits features (N, D), float32 on the CPU, of ``images`` through ``subject``."""
    return _features(subject, images, batch_size, progress, with_logits=False)[0]


def _features(
    subject: Subject, images: ImageSet, batch_size: int, progress: bool, *, with_logits: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(pre-logits (N, D) float32, head predictions (N,) or None) from one pass over images."""
    model = subject.model
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ValueError(
            f"{subject.label} ({type(model).__name__}) has no forward_features/forward_head "
            "(timm's API), so its pre-logits features cannot be read; use a timm model or a "
            "cnnvit built-in"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    feats, preds = [], []
    with preserved(model), torch.inference_mode(), progress_bar(progress) as bar:
        model.eval()
        total = -(-len(images) // batch_size)
        task = bar.add_task(f"embed {subject.label}", total=total, rate="") if bar else 0
        for batch, _labels in images.batches(batch_size):
            tokens = model.forward_features(subject.prepare(batch))  # (b, ...) unpooled
            pre = model.forward_head(tokens, pre_logits=True)  # (b, D)
            feats.append(pre.reshape(len(batch), -1).float().cpu())
            if with_logits:
                preds.append(model.forward_head(tokens).argmax(1).cpu())  # (b,)
            if bar is not None:
                bar.update(task, advance=1)
    out = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    return out, (torch.cat(preds).numpy() if with_logits and preds else None)


# --- search and scores ---------------------------------------------------------------------


def _normalize(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)  # (N, D)
    return F.normalize(t, dim=1)  # a zero vector stays zero (similarity 0 to everything)


def _exact_search(index: torch.Tensor, queries: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(Q, k) indices of each query's k most similar index vectors, most similar first; blocks
    of ``chunk`` x ``chunk`` similarities, each block's top-k merged into a running top-k."""
    out = []
    for q0 in range(0, len(queries), chunk):
        q = queries[q0 : q0 + chunk]  # (c, D)
        best_s = q.new_empty((len(q), 0))  # (c, <=k)
        best_i = torch.empty((len(q), 0), dtype=torch.long, device=q.device)
        for i0 in range(0, len(index), chunk):
            sims = q @ index[i0 : i0 + chunk].T  # (c, m)
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)  # (c, k')
            cand_s = torch.cat([best_s, s], 1)  # (c, <=2k)
            cand_i = torch.cat([best_i, i + i0], 1)
            top = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
            best_s, best_i = top.values, cand_i.gather(1, top.indices)  # (c, k)
        out.append(best_i.cpu())
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)  # (Q, k)


def _faiss_search(index: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    import faiss  # optional: only reached when importable

    flat = faiss.IndexFlatIP(index.shape[1])
    flat.add(index.cpu().numpy())
    _, found = flat.search(queries.cpu().numpy(), k)  # (Q, k)
    return torch.from_numpy(found.astype(np.int64))


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _check_inputs(index_feats, index_labels, query_feats, query_labels, ks, chunk) -> list[int]:
    if index_feats.ndim != 2 or query_feats.ndim != 2:
        raise ValueError(
            f"features must be (N, D): index {index_feats.shape}, queries {query_feats.shape}"
        )
    if index_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(
            f"index and query features differ in width: {index_feats.shape[1]} and "
            f"{query_feats.shape[1]} (embed both with the same model)"
        )
    if len(index_feats) != len(index_labels) or len(query_feats) != len(query_labels):
        raise ValueError("each feature row needs one label (index and queries)")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > len(index_feats):
        raise ValueError(
            f"ks must be between 1 and the index size ({len(index_feats)}), got {ks}; "
            "use a larger index or smaller k"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    return ks


def knn_scores(
    index_feats: np.ndarray,
    index_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    device: str | torch.device = "cpu",
    chunk: int = 4096,
) -> dict:
    """kNN accuracy and recall@k of queries against an index, by cosine similarity.

    Returns ``{"ks", "accuracy": {k: float}, "recall": {k: float}, "predictions": {k: (Q,)
    int64}, "neighbors": (Q, max k) int64 index rows, most similar first, "search": "exact
    matmul" | "faiss IndexFlatIP"}`` (the arrays are NumPy; :func:`knn_retrieval` keeps only
    the numbers). Votes are uniform; a tie goes to the smallest label, as scikit-learn's
    ``KNeighborsClassifier(weights="uniform")``.
    """
    index_labels, query_labels = np.asarray(index_labels), np.asarray(query_labels)
    ks = _check_inputs(index_feats, index_labels, query_feats, query_labels, ks, chunk)
    dev = torch.device(device)
    index = _normalize(index_feats, dev)  # (N, D)
    queries = _normalize(query_feats, dev)  # (Q, D)
    use_faiss = dev.type == "cpu" and len(index) > FAISS_MIN_INDEX and _faiss_available()
    if use_faiss:
        neighbors = _faiss_search(index, queries, ks[-1])  # (Q, kmax)
    else:
        neighbors = _exact_search(index, queries, ks[-1], chunk)  # (Q, kmax)
    # Votes count class positions in the sorted label values, so argmax's first maximum is
    # the smallest label: scikit-learn's tie rule.
    classes, codes = np.unique(index_labels, return_inverse=True)
    neighbor_codes = torch.from_numpy(codes.reshape(-1))[neighbors]  # (Q, kmax)
    neighbor_labels = classes[neighbor_codes.numpy()]  # (Q, kmax)
    accuracy, recall, predictions = {}, {}, {}
    for k in ks:
        pred = classes[_majority(neighbor_codes[:, :k], len(classes), chunk)]  # (Q,)
        predictions[k] = pred
        accuracy[k] = float(np.mean(pred == query_labels)) if len(pred) else float("nan")
        hit = (neighbor_labels[:, :k] == query_labels[:, None]).any(1)  # (Q,)
        recall[k] = float(np.mean(hit)) if len(hit) else float("nan")
    return {
        "ks": ks,
        "accuracy": accuracy,
        "recall": recall,
        "predictions": predictions,
        "neighbors": neighbors.numpy(),
        "search": "faiss IndexFlatIP" if use_faiss else "exact matmul",
    }


def _majority(codes: torch.Tensor, num_classes: int, chunk: int) -> np.ndarray:
    """(Q, k) neighbour class positions -> (Q,) most voted position, the first (smallest) on a
    tie (argmax returns the first maximum); votes counted ``chunk`` queries at a time so a
    large label set never needs a (Q, C) table."""
    out = []
    for q0 in range(0, len(codes), chunk):
        block = codes[q0 : q0 + chunk]  # (c, k)
        votes = torch.zeros((len(block), num_classes), dtype=torch.int32)  # (c, C)
        votes.scatter_add_(1, block, torch.ones_like(block, dtype=torch.int32))
        out.append(votes.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


# --- every model: embed, search, score --------------------------------------------------------


@dataclass
class ModelScores:
    """One model's retrieval scores on the queries (k -> share of the queries)."""

    dims: int  # width of the pre-logits features
    head_top1: float | None  # None where the model's classes are not the queries'
    search: str  # "exact matmul" or "faiss IndexFlatIP"
    ks: list[int]  # sorted, distinct
    accuracy: dict[int, float]
    recall: dict[int, float]


@dataclass
class KnnRun:
    """Every model's scores, in the order of the subjects, and how long they took."""

    models: list[ModelScores]
    seconds: float


def knn_retrieval(
    subjects: Sequence[Subject],
    index: ImageSet,
    queries: ImageSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
    progress: bool = True,
) -> KnnRun:
    """Embed ``index`` (training images) and ``queries`` (test images) with each model
    and score kNN retrieval of the queries against the index for each k."""
    if index.classes != queries.classes:
        raise ValueError(
            "index and queries must share their class names (the same dataset's train and "
            f"test splits): {index.classes[:5]}... and {queries.classes[:5]}..."
        )
    start = time.perf_counter()
    models = [_score_model(s, index, queries, ks, batch_size, progress) for s in subjects]
    return KnnRun(models=models, seconds=time.perf_counter() - start)


def _score_model(
    subject: Subject,
    index: ImageSet,
    queries: ImageSet,
    ks: Sequence[int],
    batch_size: int,
    progress: bool,
) -> ModelScores:
    index_feats = embed(subject, index, batch_size=batch_size, progress=progress)  # (N, D)
    query_feats, preds = _features(subject, queries, batch_size, progress, with_logits=True)
    scores = knn_scores(
        index_feats,
        index.labels.numpy(),
        query_feats,
        queries.labels.numpy(),
        ks=ks,
        device=subject.device,
    )
    # The head's classes are the model's; they only mean the queries' classes if the names
    # agree (a run folder's images always do).
    same = list(subject.classes) == list(queries.classes)
    head = float(np.mean(preds == queries.labels.numpy())) if same and len(preds) else None
    return ModelScores(
        dims=int(index_feats.shape[1]),
        head_top1=head,
        search=scores["search"],
        ks=scores["ks"],
        accuracy=scores["accuracy"],
        recall=scores["recall"],
    )
