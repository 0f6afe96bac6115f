"""Training: one model on one dataset into a run folder (:mod:`~cnnvit.train.run`), the loop, the
optimiser and schedule, checkpoints, and the assembly of runtime, data and model from a config."""
