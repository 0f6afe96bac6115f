"""The study report: tables, figures and one self-contained HTML page, from run folders alone.

Flow: ``collect`` (files -> DataFrames) -> ``tables`` / ``figures`` / ``verdict`` -> ``sections``
(one ``Section`` per part of the page) -> ``html`` (the page) ; ``build`` ties them together.
"""

from cnnvit.report.build import print_summary, write_report
from cnnvit.report.collect import collect_results, summarize

__all__ = ["collect_results", "print_summary", "summarize", "write_report"]
