"""The built-in analyses, one module each; every module here registers itself with
:mod:`cnnvit.analyze.registry` when the registry first loads them. Torch-free at import."""
