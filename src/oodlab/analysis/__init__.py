"""Analyses over the similarity artifacts: the train-test similarity gap
(:func:`similarity_report`), accuracy versus similarity (:func:`accuracy_vs_similarity`) and
nearest-neighbour image galleries (:func:`neighbor_gallery`).

Modules: :mod:`~oodlab.analysis.sources` (reading NN similarities from ``oodlab neighbors``
folders), :mod:`~oodlab.analysis.stats` (Wilson intervals, binning schemes),
:mod:`~oodlab.analysis.report`, :mod:`~oodlab.analysis.accuracy`, :mod:`~oodlab.analysis.gallery`.
"""

from oodlab.analysis.accuracy import accuracy_vs_similarity
from oodlab.analysis.gallery import neighbor_gallery
from oodlab.analysis.report import similarity_report
from oodlab.analysis.stats import BINNINGS, accuracy_by_bin, wilson_interval

__all__ = ["BINNINGS", "accuracy_by_bin", "accuracy_vs_similarity", "neighbor_gallery", "similarity_report",
           "wilson_interval"]
