"""Training: a seconds-long run on the tiny world proves train -> checkpoints -> eval, resume, the
recorded configuration and the untrained epoch 0; printed cluster commands parse as open_clip's."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

import oodlab  # noqa: F401  (torchvision next to the CPU torch)
from oodlab.models.checkpoints import latest_resumable
from oodlab.train.config import build_config
from oodlab.train.data import resolve_train_data
from oodlab.train.launch import train_commands
from oodlab.train.run import train
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.hashing import sha256_file

FAST = dict(model="tiny-vit", batch_size=32, epochs=2, lr=1e-3, warmup=2, wd=0.1, seed=3)


def _shards(tiny_world: Path) -> str:
    """Two of the tiny world's four pool shards (200 samples): a run takes seconds."""
    return str(tiny_world / "pool" / "{00000..00001}.tar")


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    manifest = train(_shards(tiny_world), out=out, **FAST)
    return out, manifest


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_run_records_its_configuration_and_keeps_epoch_0(tiny_world, run):
    out, manifest = run
    config = json.loads((out / "config.json").read_text())
    cfg = config["config"]
    n = 2 * json.loads((tiny_world / "world.json").read_text())["pool"]["shard_size"]
    steps = math.ceil(n / 32)  # one data worker: full batches only, the last one filled up
    expected = {"model": "tiny-vit", "batch_size": 32, "epochs": 2, "lr": 1e-3, "warmup": 2, "wd": 0.1,
                "precision": "fp32", "seed": 3, "num_samples": n, "samples_seen": 2 * steps * 32,
                "lr_scheduler": "const-cooldown", "epochs_cooldown": 2, "lr_cooldown_end": 1e-4}
    assert {k: cfg[k] for k in expected} == expected
    assert config["data"]["manifest"]["sha256"] == sha256_file(tiny_world / "manifest.json")
    assert config["data"]["manifest"]["stage"] == "synth"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0.pt", "epoch_1.pt", "epoch_2.pt"]
    assert manifest["counts"]["samples_seen"] == 2 * steps * 32
    params = (out / "params.txt").read_text()  # open_clip's own record of its arguments
    assert f"train_num_samples: {n}\n" in params and "batch_size: 32\n" in params
    assert "lr_scheduler: const-cooldown\n" in params and "epochs_cooldown: 2\n" in params
    # epoch 0 is the trainer's initialisation: open_clip's model under the trainer's seeding
    import open_clip

    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    torch.manual_seed(3)
    fresh = open_clip.create_model("tiny-vit").state_dict()
    zero = _state(out / "checkpoints" / "epoch_0.pt")
    assert zero["epoch"] == 0 and set(zero["state_dict"]) == set(fresh)
    assert all(torch.equal(zero["state_dict"][k], fresh[k]) for k in fresh)
    one = _state(out / "checkpoints" / "epoch_1.pt")["state_dict"]
    assert any(not torch.equal(one[k], fresh[k]) for k in fresh)


def test_train_checkpoints_eval_and_resume(tiny_world, run, tmp_path):
    from oodlab.evaluation.evaluate import evaluate

    out, _ = run
    results = evaluate(out, {"val": tiny_world / "eval" / "val"}, tmp_path / "ev", workers=0)
    assert [c["label"] for c in results["checkpoints"]] == ["epoch_0", "epoch_1", "epoch_2"]
    # a run killed while writing its last checkpoint: a truncated epoch_2.pt
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(out, copy)
    (copy / "manifest.json").unlink()
    last = copy / "checkpoints" / "epoch_2.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    kept = {p.name: sha256_file(p) for p in (copy / "checkpoints").iterdir() if p.name != "epoch_2.pt"}
    assert latest_resumable(str(copy / "checkpoints")) == str(copy / "checkpoints" / "epoch_1.pt")
    train(_shards(tiny_world), out=copy, **FAST)
    log = (copy / "out.log").read_text()
    assert "resuming checkpoint" in log and "epoch_1.pt' (epoch 1)" in log
    assert {p: sha256_file(copy / "checkpoints" / p) for p in kept} == kept
    assert _state(last)["epoch"] == 2
    again = evaluate(copy, {"val": tiny_world / "eval" / "val"}, tmp_path / "ev2", workers=0)
    assert len(again["datasets"]["val"]["metrics"]["acc1"]) == 3
    # a finished run is not trained again; another configuration is refused
    before = sha256_file(last)
    train(_shards(tiny_world), out=copy, **FAST)
    assert sha256_file(last) == before
    with pytest.raises(IncompatibleError, match=r"other inputs or parameters \(parameters.lr"):
        train(_shards(tiny_world), out=copy, **{**FAST, "lr": 2e-3})
    with pytest.raises(IncompatibleError, match=r"other inputs or parameters \(inputs.train_data"):
        train(tiny_world / "pool", out=copy, **FAST)
    # --overwrite starts afresh: the new configuration trains from epoch 0
    train(_shards(tiny_world), out=copy, overwrite=True, **{**FAST, "epochs": 1, "epochs_cooldown": 1})
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["epoch_0.pt", "epoch_1.pt"]
    assert "resuming checkpoint" not in (copy / "out.log").read_text()


def test_sample_counts_from_stats_parquet_or_tar(tiny_world, tmp_path):
    import shutil

    truth = json.loads((tiny_world / "world.json").read_text())["pool"]
    shutil.copytree(tiny_world / "pool", tmp_path / "pool")
    full = resolve_train_data(tmp_path / "pool")
    assert full.count == truth["count"] and len(full.shards) == len(truth["shards"])
    assert full.pattern == f"{(tmp_path / 'pool').absolute()}/{{00000..0000{len(truth['shards']) - 1}}}.tar"
    for p in (tmp_path / "pool").glob("*_stats.json"):
        p.unlink()
    assert resolve_train_data(tmp_path / "pool").per_shard == full.per_shard
    for p in (tmp_path / "pool").glob("*.parquet"):
        p.unlink()
    assert resolve_train_data(str(tmp_path / "pool" / "{00000..00001}.tar")).per_shard == full.per_shard[:2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a folder of .tar shards"):
        resolve_train_data(tmp_path / "empty")
    # a shard named twice would be trained on twice: refused, as by every stage reading shards
    with pytest.raises(InputError, match="given twice"):
        resolve_train_data([tmp_path / "pool", tmp_path / "pool" / "00001.tar"])


def test_default_epochs_follow_the_data():
    """Tiny models see about 60,000 samples: exactly the 5 epochs / 2 cooldown tuned on the default
    world's 12,000-sample pool, more passes over smaller pools (capped), paper models a fixed 32;
    about 7 checkpoints are kept whatever the epochs (every epoch up to 13 epochs)."""
    def schedule(n, model="tiny-vit", **kw):
        cfg = build_config(model=model, data="x.tar", num_samples=n, batch_size=None, epochs=kw.get("epochs"),
                           lr=None, warmup=None, wd=None, precision=None, lr_scheduler=None,
                           epochs_cooldown=None, lr_cooldown_end=None, seed=0, workers=1, device="cpu",
                           extra_args="")
        return cfg.epochs, cfg.epochs_cooldown, cfg.save_every

    assert schedule(12_000) == (5, 2, 1)  # the default world
    assert schedule(3_000) == (20, 8, 2)  # the small preset
    assert schedule(400) == (40, 16, 5)  # the tiny preset: capped
    assert schedule(10**9) == (1, 1, 1)  # LAION-sized data: one pass
    assert schedule(3_000, epochs=2) == (2, 2, 1)  # given epochs stay; the cooldown is at least 2
    assert schedule(3_000, model="ViT-B-32") == (32, None, 4)


def _config(**kw):
    base = dict(model="tiny-vit", data="x.tar", num_samples=12_000, batch_size=None, epochs=None, lr=None,
                warmup=None, wd=None, precision=None, lr_scheduler=None, epochs_cooldown=None, lr_cooldown_end=None,
                seed=0, workers=1, device="cpu", extra_args="")
    return build_config(**{**base, **kw})


def test_auto_trainer_is_the_memory_one_for_small_cpu_runs_only():
    assert _config().trainer == "memory"
    assert _config(device="cuda").trainer == "open_clip"  # GPUs and torchrun: open_clip's trainer
    assert _config(extra_args="--grad-clip-norm 1").trainer == "open_clip"  # its flags are open_clip's
    # 2 GiB of decoded images: 32 px tiny-vit fits ~700,000 samples, ViT-B-32 at 224 px ~14,000
    assert _config(num_samples=600_000).trainer == "memory"
    assert _config(num_samples=800_000).trainer == "open_clip"
    assert _config(model="ViT-B-32", num_samples=10_000, precision="fp32").trainer == "memory"
    assert _config(model="ViT-B-32", num_samples=20_000, precision="fp32").trainer == "open_clip"
    assert _config(model="not-a-model", trainer="auto").trainer == "open_clip"
    assert _config(trainer="open_clip").trainer == "open_clip" and _config(trainer="memory").trainer == "memory"
    assert _config().to_json()["trainer"] == "memory"
    with pytest.raises(InputError, match="trainer 'fast' is not one of auto, open_clip, memory"):
        _config(trainer="fast")


def test_random_resized_crop_draws_torchvisions_boxes_per_sample():
    """On ramp images (value = pixel x, resp. y), bilinear sampling is exact, so each output
    reveals its crop box: every box lies inside the image with torchvision's area and aspect
    bounds, and the samples of one batch get different boxes."""
    from oodlab.train.memory import random_resized_crop

    s, b = 32, 256
    xs = torch.arange(s, dtype=torch.float32) + 0.5  # pixel centres
    ramp = torch.stack([xs.expand(s, s), xs[:, None].expand(s, s)])[None].repeat(b, 1, 1, 1)
    out = random_resized_crop(ramp, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape
    # output pixel centre j + 0.5 maps to x0 + (j + 0.5) * width / s; read away from the edges,
    # where the border padding clamps samples between the image's edge and its first pixel centre
    lo, hi = 4, s - 5
    step_x = (out[:, 0, 0, hi] - out[:, 0, 0, lo]) / (hi - lo)
    step_y = (out[:, 1, hi, 0] - out[:, 1, lo, 0]) / (hi - lo)
    width, height = step_x * s, step_y * s
    x0, y0 = out[:, 0, 0, lo] - (lo + 0.5) * step_x, out[:, 1, lo, 0] - (lo + 0.5) * step_y
    tol = 1e-3
    assert (x0 >= -tol).all() and (y0 >= -tol).all()
    assert (x0 + width <= s + tol).all() and (y0 + height <= s + tol).all()
    area = width * height / s**2
    assert area.min() >= 0.08 - tol and area.max() <= 1 + tol and area.std() > 0.1
    aspect = width / height
    clipped = (width > s - tol) | (height > s - tol)  # a side clamped to the image changes the aspect
    assert (aspect[~clipped] >= 3 / 4 - tol).all() and (aspect[~clipped] <= 4 / 3 + tol).all()
    # the identity crop is the identity
    same = random_resized_crop(ramp[:2], (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(same, ramp[:2], atol=1e-4)


def _epoch_losses(run: Path) -> list[float]:
    """Each epoch's mean training loss, from the last ``Loss: x (mean)`` line of the epoch in out.log."""
    import re

    means: dict[int, float] = {}
    for line in (run / "out.log").read_text().splitlines():
        m = re.search(r"Train Epoch: (\d+) .* Loss: [0-9.]+ \(([0-9.]+)\)", line)
        if m:
            means[int(m.group(1))] = float(m.group(2))
    return [means[e] for e in sorted(means)]


def test_memory_trainer_follows_open_clip_trainer(tiny_world, tmp_path):
    """Same data, seed and schedule through both trainers: the same initial weights (bit for bit),
    and loss curves as close as open_clip's trainer is to itself with another seed (mean absolute
    difference over the epochs; measured 0.12 against a seed spread of 0.21), while both fall far
    below chance (ln 32 = 3.47 for batch 32). The seeds' curves differ mostly in when they leave
    the initial plateau."""
    cfg = {**FAST, "epochs": 16, "lr": 2e-3, "epochs_cooldown": 2}
    curves = {}
    for name, trainer, seed in (("memory", "memory", 3), ("open_clip", "open_clip", 3), ("open_clip_4", "open_clip", 4)):
        out = tmp_path / name
        train(_shards(tiny_world), out=out, trainer=trainer, **{**cfg, "seed": seed})
        assert json.loads((out / "config.json").read_text())["config"]["trainer"] == trainer
        curves[name] = _epoch_losses(out)
    zero = [_state(tmp_path / n / "checkpoints" / "epoch_0.pt")["state_dict"] for n in ("memory", "open_clip")]
    assert all(torch.equal(zero[0][k], zero[1][k]) for k in zero[1])
    mem, ref, other = (torch.tensor(curves[n]) for n in ("memory", "open_clip", "open_clip_4"))
    assert len(mem) == len(ref) == 16
    assert mem[-1] < 3.0 and ref[-1] < 3.0, curves
    seed_spread = (ref - other).abs().mean()
    assert (mem - ref).abs().mean() <= 2 * max(seed_spread, 0.1), curves


def test_an_oodlab_subset_folder_is_training_data(tiny_world, tmp_path):
    import pyarrow.parquet as pq

    from oodlab.subsets.reshard import subset

    keys = [k for f in sorted((tiny_world / "pool").glob("*.parquet")) for k in pq.read_table(f).column("key").to_pylist()]
    (tmp_path / "keys.txt").write_text("\n".join(keys[::3]) + "\n")
    subset(tmp_path / "keys.txt", [tiny_world / "pool"], tmp_path / "sub", per_shard=50)
    data = resolve_train_data(tmp_path / "sub")
    assert data.count == len(keys[::3]) and len(data.shards) == -(-len(keys[::3]) // 50)
    assert data.manifest["path"] == str(tmp_path / "sub" / "manifest.json")


def test_train_commands_match_open_clip_arguments(tiny_world, tmp_path):
    from open_clip_train.params import parse_args

    cmds = train_commands(tiny_world / "pool", tmp_path / "big", model="ViT-B-32", nodes=4, gpus_per_node=8,
                          workers=1)
    torchrun = shlex.split(cmds["torchrun"])
    assert torchrun[:4] == ["torchrun", "--nproc_per_node=8", "-m", "oodlab.train.entry"]
    args = parse_args(torchrun[4:])
    assert (args.batch_size, args.epochs, args.lr, args.model) == (33_600 // 8, 32, 5e-4, "ViT-B-32")
    assert (args.lr_scheduler, args.wd, args.precision) == ("cosine", 0.2, "amp")
    assert args.local_loss and args.gather_with_grad and args.resume == "latest" and args.device == "cuda"
    srun = next(line for line in cmds["slurm"].splitlines() if line.startswith("srun"))
    slurm = parse_args(shlex.split(srun)[shlex.split(srun).index("oodlab.train.entry") + 1 :])
    assert slurm.batch_size == 33_600 // 32 and "#SBATCH --nodes=4" in cmds["slurm"]
    assert not (tmp_path / "big").exists()
    with pytest.raises(InputError, match="does not split evenly"):
        train_commands(tiny_world / "pool", tmp_path / "b", model="ViT-B-32", batch_size=100, gpus_per_node=8)
    # oodlab's precision words become open_clip's
    for word, theirs in (("fp32", "fp32"), ("bf16", "amp_bf16"), ("fp16", "amp")):
        line = train_commands(tiny_world / "pool", tmp_path / "b", precision=word)["single"]
        assert parse_args(shlex.split(line)[3:]).precision == theirs


def test_single_process_command_survives_the_shell(tiny_world, tmp_path):
    """The brace pattern of --train-data is quoted: a shell passes it as one argument."""
    import subprocess

    from open_clip_train.params import parse_args

    line = train_commands(_shards(tiny_world), tmp_path / "run with space", **FAST)["single"]
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "oodlab.train.entry"]  # printed lines are open_clip's trainer
    args = parse_args(argv[3:])
    assert args.train_data == str(tiny_world / "pool" / "{00000..00001}.tar")
    assert args.name == "run with space"
    # what a real shell (bash expands unquoted braces) hands to the program
    echoed = subprocess.run(["bash", "-c", line.replace("python", "printf '%s\\n'", 1)], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert echoed == argv[1:]


def test_bad_arguments_are_refused(tiny_world, tmp_path):
    with pytest.raises(InputError, match="workers=9"):
        train(tiny_world / "pool", model="tiny-vit", out=tmp_path / "r", workers=9)
    with pytest.raises(InputError, match="precision"):
        train(tiny_world / "pool", model="tiny-vit", out=tmp_path / "r", precision="fp8")
    with pytest.raises(InputError, match="oodlab sets itself"):
        train(tiny_world / "pool", model="tiny-vit", out=tmp_path / "r", extra_args="--epochs 3")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(IncompatibleError, match="holds files that no train run wrote"):
        train(tiny_world / "pool", tmp_path / "other", **FAST)
    assert (tmp_path / "other" / "x.txt").read_text() == "x"


def test_cli_train_commands(tiny_world, tmp_path):
    from click.testing import CliRunner

    from oodlab.cli import app

    result = CliRunner().invoke(app, ["train-commands", "--train-data", str(tiny_world / "pool"), "--out",
                                      str(tmp_path / "run"), "--gpus-per-node", "2"])
    assert result.exit_code == 0, result.output
    assert "torchrun --nproc_per_node=2 -m oodlab.train.entry" in result.output and "#SBATCH" in result.output
    assert not (tmp_path / "run").exists()


def test_a_crashing_trainer_is_reported_not_fatal(tiny_world, tmp_path):
    from oodlab.train.run import TrainingFailed

    with pytest.raises(TrainingFailed, match="exited with status 2") as err:
        train(_shards(tiny_world), out=tmp_path / "run", extra_args="--grad-clip-norm not-a-number", **FAST)
    assert "Last lines" in str(err.value) and "Fix:" in str(err.value)
    assert (tmp_path / "run" / "config.json").is_file() and not (tmp_path / "run" / "manifest.json").exists()
