"""``python -m oodlab.train.memory ARGS``: open_clip training for data that fits in memory.

``ARGS`` are open_clip_train's own arguments, parsed by its own parser (the same defaults:
AdamW betas and eps per model, warmup, schedules, loss). What differs from its trainer is only
*how samples reach the model*, which dominates small CPU runs (on the default synthetic world,
open_clip's trainer spent ~335 ms per batch-128 step of the issue-10 tiny-vit, of which ~140 ms
was the model; its loader process decodes every JPEG every epoch on the same cores):

1. the shards are decoded once (JPEG -> uint8 at the model's image size, captions -> tokens with
   the model's tokenizer) instead of every epoch by a loader process sharing the cores;
2. each epoch is a seeded permutation of the samples (``torch.Generator`` seeded from
   ``(seed, epoch)``), batches of ``--batch-size``, as many per epoch as open_clip's webdataset
   loader makes (the same ``steps_per_epoch``; the stream wraps around);
3. the training augmentation of open_clip's ``preprocess_train`` (a random resized crop) is done
   per sample on the batch tensor (:func:`random_resized_crop`, bilinear instead of bicubic, on
   the image already resized to the model's size);
4. AdamW is torch's fused implementation (one kernel over all parameters; same update rule).

Everything else is open_clip's: ``create_model_and_transforms`` under the trainer's seeding
(``random_seed(seed)``: epoch 0 is bit-identical to the trainer's), ``create_loss``, the
parameter groups (no weight decay on gains, biases, logit scale), the lr schedules of
``open_clip_train.scheduler``, the logit-scale clamp, the checkpoint format
(``{epoch, name, state_dict, optimizer}``), ``out.log`` lines in the trainer's format and
``--resume latest`` (the last complete ``epoch_{n}.pt``). A run is checked against open_clip's
trainer on the same data and seed in ``tests/test_train.py`` (loss curves within noise).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger("oodlab.train.memory")


def decode_shards(shards: Sequence[Path], image_size: int, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 [N, 3, S, S]: shorter side resized to S bicubic, centre crop) and tokens
    (int64 [N, context]) of every sample with an image and a caption, in shard order.

    A JPEG at least twice the size is decoded at a reduced scale first (PIL's ``draft``: the
    decoder's DCT scaling, 2-3x faster for the world's 64 px images at 32 px) and then resized.
    """
    from io import BytesIO

    from PIL import Image

    from oodlab.data.shards import iter_tar_samples

    images, captions = [], []
    for shard in shards:
        for sample in iter_tar_samples(shard):
            data, text = sample.image, sample.caption
            if data is None or text is None:
                continue
            img = Image.open(BytesIO(data))
            img.draft("RGB", (image_size, image_size))
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                w, h = img.size
                scale = image_size / min(w, h)
                img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
                left, top = (img.size[0] - image_size) // 2, (img.size[1] - image_size) // 2
                img = img.crop((left, top, left + image_size, top + image_size))
            images.append(np.asarray(img, np.uint8).transpose(2, 0, 1))
            captions.append(text)
    if not images:
        raise ValueError(f"no sample with an image and a caption in {len(shards)} shards")
    return torch.from_numpy(np.stack(images)), tokenizer(captions)


def random_resized_crop(batch: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                        generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop drawn per sample (its area/aspect sampling, without the
    fallback to a centre crop), on a float batch [B, C, S, S] -> same shape, bilinear.

    Why by hand: torchvision's transform crops a whole batch alike and runs per PIL image in a
    loader; one ``affine_grid`` + ``grid_sample`` crops every sample differently in a few ms
    (``roi_align`` did the same in 400 ms per batch of 128 at 64 px on 2 cores).
    """
    import torch.nn.functional as F

    b, _, h, w = batch.shape
    area = torch.empty(b).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    cw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    ch = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _normalize_of(preprocess: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.transforms import Normalize

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, Normalize):
            return torch.tensor(t.mean).view(1, -1, 1, 1), torch.tensor(t.std).view(1, -1, 1, 1)
    raise ValueError("the model's preprocess has no Normalize step")


def _crop_params(preprocess: Any) -> tuple[tuple[float, float], tuple[float, float]] | None:
    from torchvision.transforms import RandomResizedCrop

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, RandomResizedCrop):
            return tuple(t.scale), tuple(t.ratio)
    return None


def _steps_per_epoch(num_samples: int, batch_size: int, workers: int) -> int:
    """As open_clip's webdataset loader: full batches, a multiple of the worker count."""
    batches = math.ceil(num_samples / batch_size)
    return math.ceil(batches / max(1, workers)) * max(1, workers)


def _setup_logging(path: Path) -> None:
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", datefmt="%Y-%m-%d,%H:%M:%S")
    for handler in (logging.FileHandler(path), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _refuse_unsupported(args: Any) -> None:
    problems = [
        (args.dataset_type not in ("webdataset", "auto"), f"--dataset-type {args.dataset_type}"),
        (args.accum_freq != 1, "--accum-freq"),
        (args.precision not in ("fp32", "amp_bf16"), f"--precision {args.precision}"),
        (bool(args.distill_model), "--distill-model"),
        (bool(args.siglip), "--siglip"),
        (bool(args.lock_image) or bool(args.lock_text), "--lock-image/--lock-text"),
        (args.val_data is not None, "--val-data"),
    ]
    bad = [what for cond, what in problems if cond]
    if bad:
        raise SystemExit(f"oodlab.train.memory does not support {', '.join(bad)}: use open_clip's trainer "
                         f"(oodlab train --trainer open_clip)")


def main(argv: Sequence[str] | None = None) -> int:
    """Train as open_clip_train would with ``argv``; returns the exit status."""
    import oodlab  # noqa: F401  (compatibility settings)
    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    import open_clip
    from open_clip_train.main import random_seed
    from open_clip_train.params import parse_args
    from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

    from oodlab.data.sources import shard_paths
    from oodlab.models.checkpoints import EPOCH0_NAME, latest_resumable
    from oodlab.utils.atomic import atomic_path

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    _refuse_unsupported(args)
    args.distill, args.rank, args.world_size = False, 0, 1  # what the trainer's set-up fills in
    run = Path(args.logs) / args.name
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run / "out.log")
    with open(run / "params.txt", "w") as f:
        for name in sorted(vars(args)):
            f.write(f"{name}: {getattr(args, name)}\n")
    device = torch.device(args.device)

    random_seed(args.seed, 0)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(
        args.model, args.pretrained, precision=args.precision, device=device, output_dict=True, aug_cfg=args.aug_cfg)
    if not (ckpt_dir / EPOCH0_NAME).exists():
        with atomic_path(str(ckpt_dir / EPOCH0_NAME)) as tmp:
            torch.save({"epoch": 0, "name": args.name, "state_dict": model.state_dict()}, tmp)
    random_seed(args.seed, 0)

    t0 = time.perf_counter()
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    shards = shard_paths(args.train_data.split("::"))
    images, tokens = decode_shards(shards, image_size, open_clip.get_tokenizer(args.model))
    n = len(images)
    log.info(f"Decoded {n} samples of {len(shards)} shards into memory ({images.nbytes / 2**20:.0f} MiB) "
             f"in {time.perf_counter() - t0:.1f} s")
    mean, std = _normalize_of(preprocess_train)
    crop = _crop_params(preprocess_train)

    exclude = lambda n_, p: p.ndim < 2 or "bn" in n_ or "ln" in n_ or "bias" in n_ or "logit_scale" in n_  # noqa: E731
    named = [(n_, p) for n_, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n_, p in named if exclude(n_, p)], "weight_decay": 0.0},
         {"params": [p for n_, p in named if not exclude(n_, p)], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=True)
    loss_fn = open_clip.create_loss(args)

    steps = _steps_per_epoch(args.train_num_samples, args.batch_size, args.workers)
    total = steps * args.epochs
    if args.lr_scheduler == "cosine":
        scheduler = cosine_lr(optimizer, args.lr, args.warmup, total)
    elif args.lr_scheduler == "const":
        scheduler = const_lr(optimizer, args.lr, args.warmup, total)
    else:
        scheduler = const_lr_cooldown(optimizer, args.lr, args.warmup, total, steps * args.epochs_cooldown,
                                      args.lr_cooldown_power, args.lr_cooldown_end)

    start_epoch = 0
    latest = latest_resumable(str(ckpt_dir)) if args.resume == "latest" else args.resume
    if latest:
        ckpt = torch.load(latest, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"]
        log.info(f"=> resuming checkpoint '{latest}' (epoch {start_epoch})")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "amp_bf16")
    digits = math.ceil(math.log(steps * args.batch_size + 1, 10))
    for epoch in range(start_epoch, args.epochs):
        log.info(f"Start epoch {epoch}")
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-steps * args.batch_size // n))])
        loss_sum, t_epoch = 0.0, time.perf_counter()
        for i in range(steps):
            scheduler(epoch * steps + i)
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = images[idx].to(device).float().div_(255)
            if crop is not None:
                x = random_resized_crop(x, *crop, generator=gen)
            x = (x - mean.to(device)) / std.to(device)
            with autocast:
                out = model(x, tokens[idx].to(device))
                losses = loss_fn(**out, output_dict=True)
                total_loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            if args.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            value = float(total_loss)
            loss_sum += value
            if i % args.log_every_n_steps == 0 or i + 1 == steps:
                seen = (i + 1) * args.batch_size
                rate = seen / max(time.perf_counter() - t_epoch, 1e-9)
                log.info(f"Train Epoch: {epoch} [{seen:>{digits}}/{steps * args.batch_size} ({100 * (i + 1) / steps:.0f}%)] "
                         f"{rate:#g}/s LR: {optimizer.param_groups[0]['lr']:5f} "
                         f"Logit Scale: {float(out['logit_scale']):.3f} Loss: {value:#.5g} ({loss_sum / (i + 1):#.5g})")
        completed = epoch + 1
        if completed == args.epochs or (args.save_frequency > 0 and completed % args.save_frequency == 0):
            with atomic_path(str(ckpt_dir / f"epoch_{completed}.pt")) as tmp:
                torch.save({"epoch": completed, "name": args.name, "state_dict": model.state_dict(),
                            "optimizer": optimizer.state_dict()}, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
