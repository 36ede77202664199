"""The ICLR 2025 domain study: which training images are natural, renditions or ambiguous.

:mod:`~oodlab.domains.labels` (the label space, label files), :mod:`~oodlab.domains.head` (a
classifier head on stored embeddings: ``oodlab domains train``), :mod:`~oodlab.domains.calibrate`
(per-class thresholds certified to a target precision: ``oodlab domains calibrate``) and
:mod:`~oodlab.domains.predict` (every row of a store, part by part: ``oodlab domains predict``).
"""
