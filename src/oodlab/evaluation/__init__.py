"""Zero-shot evaluation: declarative dataset specs, class prototypes from prompt templates,
top-1 / top-5 / mean per-class recall, per-sample predictions, CLIP_benchmark records and curves
over a run's checkpoints."""

from oodlab.evaluation.datasets import EvalDataset, load_dataset, resolve_spec
from oodlab.evaluation.evaluate import evaluate
from oodlab.evaluation.specs import SPECS, DatasetSpec

__all__ = ["DatasetSpec", "EvalDataset", "SPECS", "evaluate", "load_dataset", "resolve_spec"]
