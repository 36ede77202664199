"""Zero-shot evaluation against an independent computation with open_clip, torchvision and sklearn
(``tests.helpers.zero_shot_reference``)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import oodlab  # noqa: F401  (torchvision next to the CPU torch)
from oodlab.evaluation.evaluate import evaluate
from oodlab.evaluation.metrics import classification_metrics
from oodlab.utils.errors import IncompatibleError, InputError
from tests.helpers import zero_shot_reference


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny-vit with seeded random weights, saved as an open_clip training checkpoint."""
    import open_clip

    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    torch.manual_seed(123)
    model = open_clip.create_model("tiny-vit")
    path = tmp_path_factory.mktemp("ck") / "epoch_7.pt"
    torch.save({"epoch": 7, "name": "t", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)
    return path


def top_k_accuracy(labels: np.ndarray, logits: np.ndarray, k: int) -> float:
    """Brute force: the label's rank is the number of classes with a larger logit."""
    hits = [sum(row > row[y]) < k for row, y in zip(logits, labels)]
    return float(np.mean(hits))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean over the classes present in labels of their recall (a confusion-matrix loop)."""
    recalls = []
    for c in sorted(set(labels.tolist())):
        mine = labels == c
        recalls.append(np.sum(predictions[mine] == c) / np.sum(mine))
    return float(np.mean(recalls))


def test_zero_shot_equals_a_direct_open_clip_computation(tiny_world, checkpoint, tmp_path):
    out = tmp_path / "ev"
    results = evaluate(checkpoint, {"val": tiny_world / "eval" / "val", "r": tiny_world / "eval" / "r"}, out,
                       batch_size=7, workers=1)
    for name, dataset in (("val", "eval/val"), ("r", "eval/r")):
        ref = zero_shot_reference(tiny_world, checkpoint, dataset)
        preds = pq.read_table(out / "epoch_7" / name / "predictions.parquet").to_pydict()
        assert preds["key"] == ref["keys"]
        assert preds["label"] == ref["labels"].tolist()
        order = np.argsort(-ref["logits"], axis=1, kind="stable")
        top2 = np.take_along_axis(ref["logits"], order[:, :2], axis=1)
        clear = (top2[:, 0] - top2[:, 1]) > 1e-5  # ignore near-ties, where float noise may reorder
        assert clear.mean() > 0.9
        assert (np.array(preds["prediction"])[clear] == order[clear, 0]).all()
        assert preds["correct"] == [p == lbl for p, lbl in zip(preds["prediction"], preds["label"])]
        np.testing.assert_allclose([s[0] for s in preds["top5_score"]], ref["logits"].max(axis=1), atol=1e-5)
        n_classes = ref["logits"].shape[1]
        metrics = json.loads((out / "clip_benchmark" / f"{name}_epoch_7_tiny-vit_en_zeroshot_classification.json")
                             .read_text())["metrics"]
        assert metrics["acc1"] == pytest.approx((ref["logits"].argmax(1) == ref["labels"]).mean(), abs=1e-9)
        assert n_classes >= 5
        assert metrics["acc5"] == pytest.approx(top_k_accuracy(ref["labels"], ref["logits"], 5), abs=1e-9)
        assert metrics["mean_per_class_recall"] == pytest.approx(
            balanced_accuracy(ref["labels"], ref["logits"].argmax(1)), abs=1e-9)
        assert results["datasets"][name]["metrics"]["acc1"] == [metrics["acc1"]]


def test_clip_benchmark_json_and_outputs(tiny_world, checkpoint, tmp_path):
    out = tmp_path / "ev"
    evaluate(checkpoint, {"val": tiny_world / "eval" / "val"}, out, save_logits=True, workers=0)
    records = sorted((out / "clip_benchmark").iterdir())
    assert [p.name for p in records] == ["val_epoch_7_tiny-vit_en_zeroshot_classification.json"]
    record = json.loads(records[0].read_text())
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert record["task"] == "zeroshot_classification" and record["dataset"] == "val" and record["model"] == "tiny-vit"
    logits = np.load(out / "epoch_7" / "val" / "logits.npy")
    preds = pq.read_table(out / "epoch_7" / "val" / "predictions.parquet").to_pydict()
    assert logits.shape == (len(preds["key"]), 8) and logits.dtype == np.float16
    np.testing.assert_allclose(logits.max(axis=1), [s[0] for s in preds["top5_score"]], atol=2e-3)
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0] == "checkpoint,epoch,dataset,n,acc1,acc5,mean_per_class_recall"
    assert lines[1].startswith(f"epoch_7,7,val,{len(preds['key'])},")
    described = json.loads((out / "datasets" / "val.json").read_text())
    assert described["spec"] == "world:eval/val" and described["n_classes"] == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "evaluate" and manifest["counts"]["pairs"] == 1


def test_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 12))
    labels = rng.integers(0, 10, 300)  # classes 10 and 11 never occur as labels
    topk = np.argsort(-logits, axis=1)[:, :5]
    m = classification_metrics(labels, topk, 12)
    assert m["acc1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert m["acc5"] == pytest.approx(top_k_accuracy(labels, logits, 5))
    assert m["mean_per_class_recall"] == pytest.approx(balanced_accuracy(labels, logits.argmax(1)))
    assert classification_metrics(labels % 3, topk[:, :3] % 3, 3)["acc5"] is None


def test_mismatched_architecture_fails_clearly(tiny_world, checkpoint, tmp_path):
    with pytest.raises(IncompatibleError, match="does not match architecture 'tiny-rn'") as err:
        evaluate(checkpoint, {"val": tiny_world / "eval" / "val"}, tmp_path / "ev", model="tiny-rn")
    assert "Fix:" in str(err.value)


def test_run_curves_resume_and_refuse_other_inputs(tiny_world, checkpoint, tmp_path):
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    state = torch.load(checkpoint, weights_only=True)
    for epoch in (10, 0, 2):
        torch.manual_seed(epoch)
        sd = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state["state_dict"].items()}
        torch.save({"epoch": epoch, "name": "r", "state_dict": sd}, run / f"epoch_{epoch}.pt")
    (run / "epoch_latest.pt").write_bytes((run / "epoch_2.pt").read_bytes())  # not an epoch
    out = tmp_path / "ev"
    sets = {"val": tiny_world / "eval" / "val", "sk": tiny_world / "domainnet" / "sketch"}
    first = evaluate(tmp_path / "run", sets, out, workers=0)
    assert [c["label"] for c in first["checkpoints"]] == ["epoch_0", "epoch_2", "epoch_10"]
    assert len(first["datasets"]["val"]["metrics"]["acc1"]) == 3
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # as if killed before the last pair finished: its metrics and what follows are missing
    for name in ("epoch_10/sk/metrics.json", "results.json", "curves.csv", "manifest.json"):
        (out / name).unlink()
    again = evaluate(tmp_path / "run", sets, out, workers=0)
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert again == first and after == before  # a resumed run writes the bytes of a clean run
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert evaluate(tmp_path / "run", sets, out, workers=0) == first  # complete: nothing is redone
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(IncompatibleError, match=r"other inputs or parameters \(inputs.eval_data"):
        evaluate(tmp_path / "run", {"val": tiny_world / "eval" / "v2"}, out, workers=0)
    with pytest.raises(IncompatibleError, match=r"other inputs or parameters \(parameters.precision"):
        evaluate(tmp_path / "run", sets, out, workers=0, precision="bf16")


def test_bad_arguments(tiny_world, checkpoint, tmp_path):
    with pytest.raises(InputError, match="plain file name"):
        evaluate(checkpoint, {"a/b": tiny_world / "eval" / "val"}, tmp_path / "e")
    with pytest.raises(InputError, match="not eval sets"):
        evaluate(checkpoint, {"val": tiny_world / "eval" / "val"}, tmp_path / "e", specs={"x": "world"})
    with pytest.raises(InputError, match="checkpoint not found"):
        evaluate(tmp_path / "none.pt", {"val": tiny_world / "eval" / "val"}, tmp_path / "e")


def test_cli_evaluate(tiny_world, checkpoint, tmp_path):
    from click.testing import CliRunner

    from oodlab.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--eval-data",
                                      f"v={tiny_world / 'eval' / 'val'}", "--spec", "v=world", "--out",
                                      str(tmp_path / "e"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "epoch_7" / "v" / "predictions.parquet").is_file()


def test_clip_benchmark_build_reads_the_records_folder(tiny_world, checkpoint, tmp_path):
    """CLIP_benchmark 1.6.2's ``build`` reads every *.json of a folder and needs ``metrics``,
    ``model`` and ``pretrained`` in each; this is its collection step, run on our folder."""
    import csv
    import os

    out = tmp_path / "ev"
    evaluate(checkpoint, {"val": tiny_world / "eval" / "val", "r": tiny_world / "eval" / "r"}, out, workers=0)
    folder = str(out / "clip_benchmark")
    rows = []
    for path in [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json")]:
        data = json.load(open(path))
        row = {**data["metrics"], **data}
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        rows.append(row)
    with open(tmp_path / "benchmark.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    table = {r["dataset"]: r for r in csv.DictReader(open(tmp_path / "benchmark.csv"))}
    results = json.loads((out / "results.json").read_text())["datasets"]
    assert set(table) == {"val", "r"}
    for name, row in table.items():
        assert float(row["acc1"]) == pytest.approx(results[name]["metrics"]["acc1"][0])
