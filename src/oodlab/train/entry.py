"""``python -m oodlab.train.entry ARGS``: open_clip's trainer with oodlab's environment.

``ARGS`` are open_clip_train's own arguments (``python -m open_clip_train.main --help``). Before
the trainer starts, this entry point

1. imports :mod:`oodlab` (torchvision next to a CPU torch, ``HF_HUB_OFFLINE=1``) and registers
   the tiny configs, so ``--model tiny-vit`` works like any open_clip architecture;
2. hooks the trainer's model creation so that, on the master process, the freshly initialised
   model is saved as ``{logs}/{name}/checkpoints/epoch_0.pt`` (same format as the trainer's
   checkpoints, without optimizer state) unless that file exists. The weights are the ones the
   trainer then trains: the same object, right after ``create_model_and_transforms`` under the
   trainer's own ``--seed``. Curves therefore start at the true epoch 0;
3. makes ``--resume latest`` pick the last *complete* ``epoch_{n}.pt`` with n >= 1 (the trainer
   writes checkpoints in place, so a killed run can leave a truncated one; and epoch 0 has no
   optimizer state). With none, the run starts afresh from the same seed;
4. seeds the sample shuffle buffer of open_clip's webdataset pipeline from ``--seed`` (webdataset
   seeds it from the clock, which made identical runs differ by up to 10 points of accuracy on the
   synthetic world): each data-loading worker's n-th pass over its shards gets
   ``Random((seed, worker, n))``. A resumed run restarts the pass count, so its sample order after
   the resume differs from an uninterrupted run's.

It runs in its own process (``oodlab train`` starts it with ``subprocess``; ``torchrun`` starts
one per GPU), so a crash of the trainer cannot take the caller down.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from oodlab.models.checkpoints import EPOCH0_NAME, latest_resumable
from oodlab.utils.atomic import atomic_path


def _hook_epoch0(trainer: Any) -> dict[str, Any]:
    """Wrap ``parse_args`` (to see the parsed arguments) and ``create_model_and_transforms``
    (to save the initial weights) in the trainer's module namespace. Returns the dict that
    will hold the parsed arguments under ``"args"``."""
    for name in ("parse_args", "create_model_and_transforms", "is_master"):
        if not hasattr(trainer, name):
            raise RuntimeError(
                f"open_clip_train.main has no {name!r}: this open_clip version is not supported by "
                "oodlab's epoch-0 hook (tested with open_clip_torch 3.3)"
            )
    seen: dict[str, Any] = {}
    parse_args: Callable = trainer.parse_args
    create: Callable = trainer.create_model_and_transforms

    def parse_and_keep(args: Sequence[str]) -> Any:
        seen["args"] = parse_args(args)
        return seen["args"]

    def create_and_save(*a: Any, **kw: Any) -> Any:
        out = create(*a, **kw)
        args = seen.get("args")
        ckpt_dir = getattr(args, "checkpoint_path", None)
        if args is not None and ckpt_dir and trainer.is_master(args):
            path = os.path.join(ckpt_dir, EPOCH0_NAME)
            if not os.path.exists(path):
                model = out[0]
                state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                import torch

                with atomic_path(path) as tmp:
                    torch.save({"epoch": 0, "name": args.name, "state_dict": state}, tmp)
        return out

    trainer.parse_args = parse_and_keep
    trainer.create_model_and_transforms = create_and_save
    return seen


def _hook_resume(trainer: Any) -> None:
    """``--resume latest`` picks :func:`latest_resumable` instead of the last ``*.pt`` by name."""
    if not hasattr(trainer, "get_latest_checkpoint"):
        raise RuntimeError("open_clip_train.main has no 'get_latest_checkpoint': unsupported open_clip version")
    original: Callable = trainer.get_latest_checkpoint

    def latest(path: str, remote: bool) -> str | None:
        return original(path, remote) if remote else latest_resumable(path)

    trainer.get_latest_checkpoint = latest


def _hook_sample_shuffle(seed_of: Callable[[], int]) -> None:
    """Replace ``webdataset.shuffle`` (looked up by open_clip's pipeline at build time) with a
    seeded one; ``seed_of()`` gives the trainer's ``--seed`` once arguments are parsed."""
    import random

    import torch.utils.data
    import webdataset
    from webdataset.filters import _shuffle, pipelinefilter

    passes: dict[int, int] = {}

    def seeded(data: Any, bufsize: int = 1000, initial: int = 100, rng: Any = None, handler: Any = None) -> Any:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        passes[worker] = passes.get(worker, -1) + 1
        rng = rng or random.Random(f"{seed_of()}/{worker}/{passes[worker]}")
        return _shuffle(data, bufsize, initial, rng, handler)

    webdataset.shuffle = pipelinefilter(seeded)


def main(argv: Sequence[str] | None = None) -> int:
    """Run open_clip's trainer with ``argv`` (default ``sys.argv[1:]``); returns its exit status."""
    import oodlab  # noqa: F401  (compatibility settings)
    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    import open_clip_train.main as trainer

    seen = _hook_epoch0(trainer)
    _hook_resume(trainer)
    _hook_sample_shuffle(lambda: getattr(seen.get("args"), "seed", 0))
    status = trainer.main(list(sys.argv[1:] if argv is None else argv))
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
