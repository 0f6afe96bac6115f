"""Look inside trained models: Grad-CAM, attention, feature maps, CKA, kNN retrieval, shape bias
and corruption robustness.

Every analysis takes :class:`~cnnvit.analyze.subject.Subject` objects (a model in eval mode with
its own preprocessing, from a run folder or a model name) and an
:class:`~cnnvit.analyze.images.ImageSet` (uint8 images and labels), writes its numbers and
figures to a folder, and leaves each model exactly as it found it (hooks are context managers,
see :mod:`cnnvit.analyze.hooks`).
"""
