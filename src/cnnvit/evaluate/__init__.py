"""Evaluation of trained runs and models: re-evaluating a run folder, batched evaluation of
several models (:mod:`~cnnvit.evaluate.inference`), classifying images, and the agreement of two
models on the same images (:mod:`~cnnvit.evaluate.agreement`, torch-free)."""
