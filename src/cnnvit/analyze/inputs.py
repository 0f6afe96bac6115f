"""The models and images an analysis looks at, loaded on first use and shared by the analyses
of one run: the study stage (its analysed cells) or one CLI verb (run folders or model names).

Written once for every analysis: subjects with distinct labels, and stratified subsets of the
test (or training) images, each loaded once per size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from cnnvit.analyze.images import ImageSet, Split
from cnnvit.analyze.subject import Subject

__all__ = ["Inputs"]

ImageLoader = Callable[[Split, int | None], ImageSet]


class Inputs:
    """``subjects``: the models (built on first use); ``val(n)`` / ``train(n)``: images.

    ``load_subjects`` builds the models; ``load_images(split, count)`` reads a split's stratified
    subset of ``count`` images (None: all).
    """

    def __init__(
        self,
        load_subjects: Callable[[], list[Subject]],
        load_images: ImageLoader,
        *,
        progress: bool = True,
    ) -> None:
        self._load_subjects = load_subjects
        self._load_images = load_images
        self._images: dict[tuple[Split, int | None], ImageSet] = {}
        self.progress = progress

    @cached_property
    def subjects(self) -> list[Subject]:
        subjects = self._load_subjects()
        if not subjects:
            raise ValueError("an analysis needs at least one model")
        labels = [s.label for s in subjects]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two models share a label: {labels}; give them distinct labels")
        return subjects

    def val(self, count: int | None = None) -> ImageSet:
        return self._get("val", count)

    def train(self, count: int | None = None) -> ImageSet:
        return self._get("train", count)

    def _get(self, split: Split, count: int | None) -> ImageSet:
        if (split, count) not in self._images:
            self._images[(split, count)] = self._load_images(split, count)
        return self._images[(split, count)]
