"""Reports of a compression run: ``report.md``, ``report.html`` (self-contained) and ``report.json``.

Input is the ``report.json`` dict (``Result.to_dict()``): title, created, met, message, budget,
baseline and final measurements, trials, pareto, layers, recipe, blocking_layers, artifacts.
Every key is optional; plots need matplotlib, which loads only when a report is written.
"""

from autocompress.report.headline import headline
from autocompress.report.render import render_html, render_markdown, write_reports
from autocompress.report.sensitivity import sensitivity_tables, write_inspect
from autocompress.report.tables import before_after_table

__all__ = ["before_after_table", "headline", "render_html", "render_markdown", "sensitivity_tables", "write_inspect",
           "write_reports"]
