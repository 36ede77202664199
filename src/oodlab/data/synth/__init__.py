"""The synthetic world: a procedurally generated stand-in for LAION, ImageNet and its test sets,
and DomainNet, small enough for a CPU.

Modules: :mod:`~oodlab.data.synth.config` (sizes, presets), :mod:`~oodlab.data.synth.primitives`
and :mod:`~oodlab.data.synth.classes` (objects as compositions of parts),
:mod:`~oodlab.data.synth.domains` (the six DomainNet styles), :mod:`~oodlab.data.synth.captions`,
:mod:`~oodlab.data.synth.plan` (what each dataset index holds, planted near-duplicates),
:mod:`~oodlab.data.synth.world` (writing everything) and :mod:`~oodlab.data.synth.contact_sheet`.
"""

from oodlab.data.synth.config import PRESETS, WorldConfig
from oodlab.data.synth.world import synth

__all__ = ["PRESETS", "WorldConfig", "synth"]
