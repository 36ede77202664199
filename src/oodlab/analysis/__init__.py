"""Analyses over the similarity artifacts: the train-test similarity gap
(:func:`similarity_report`), accuracy versus similarity (:func:`similarity_accuracy`) and
nearest-neighbour image galleries (:func:`similarity_gallery`).

Modules: :mod:`~oodlab.analysis.sources` (reading NN similarities from neighbours folders),
:mod:`~oodlab.analysis.stats` (Wilson intervals, binning schemes), :mod:`~oodlab.analysis.report`,
:mod:`~oodlab.analysis.accuracy`, :mod:`~oodlab.analysis.gallery`.
"""

from oodlab.analysis.accuracy import similarity_accuracy
from oodlab.analysis.gallery import similarity_gallery
from oodlab.analysis.report import similarity_report
from oodlab.analysis.stats import BINNINGS, accuracy_by_bin, wilson_interval

__all__ = ["BINNINGS", "accuracy_by_bin", "similarity_accuracy", "similarity_gallery", "similarity_report",
           "wilson_interval"]
