"""The HTML report of a demo folder (:func:`report`): every table, claim and figure on one page."""

from oodlab.report.build import SECTIONS, report

__all__ = ["SECTIONS", "report"]
