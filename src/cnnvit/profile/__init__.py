"""The efficiency profile: cost (:mod:`~cnnvit.profile.cost`), speed and memory
(:mod:`~cnnvit.profile.speed`), the measurement of a model or a run
(:mod:`~cnnvit.profile.profiler`) and the profile as data (:mod:`~cnnvit.profile.record`,
torch-free)."""
