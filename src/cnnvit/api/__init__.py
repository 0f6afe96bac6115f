"""The Python API, for notebooks and scripts: what the ``cnnvit`` verbs do, returning objects.

* :func:`compare` runs a study (or continues it) and returns a :class:`Study`: ``results`` and
  ``summary`` as DataFrames, the report's ``verdict`` sentences, ``report_path``; in Jupyter it
  shows its verdict and accuracy figure. :meth:`Study.load` opens a finished study folder.
* :func:`train_run` trains one run and returns a :class:`Run`; :func:`load_run` opens a run
  folder: ``config``, ``metrics``, ``epochs``, ``predictions`` and ``model()``.
* :func:`analyze_runs` runs a registered analysis (``"cka"``, ``"knn"``, ...) on run folders
  and returns its numbers.

Config overrides are keyword arguments, the dotted key with ``__`` for each dot
(``recipe__train__epochs=2`` is ``--set recipe.train.epochs=2``), their values typed Python
objects. The CLI's ``compare`` and ``train`` call these functions.
"""

from cnnvit.api.analysis import analysis_names, analyze_runs
from cnnvit.api.run import Run, load_run, train_run
from cnnvit.api.study import Study, compare, compare_all

__all__ = [
    "Run",
    "Study",
    "analysis_names",
    "analyze_runs",
    "compare",
    "compare_all",
    "load_run",
    "train_run",
]
