"""The study report: tables, figures and one self-contained HTML page, from run folders alone.

Flow: ``collect`` (files -> DataFrames) -> ``pairing`` (the head-to-head pair, seed by seed)
and ``learning_fit`` (fitted learning curves) -> ``verdict`` (decided by
:mod:`cnnvit.stats.paired`) -> ``context`` (what every section sees) -> ``header``,
``sections``, ``training``, ``calibration``, ``agreement`` (one ``Section`` per part of the
page, with their ``tables`` and ``figures``) -> ``html`` (the page); ``build`` ties them together
and prints the terminal summary.
"""

from cnnvit.report.build import print_summary, write_report
from cnnvit.report.collect import collect_results, summarize

__all__ = ["collect_results", "print_summary", "summarize", "write_report"]
