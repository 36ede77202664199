"""The demo's own bookkeeping (its stages are tested where they live)."""

import json

import pyarrow.parquet as pq
import pytest

from oodlab.experiments.demo import demo
from oodlab.utils.errors import InputError


def test_world_stage_records_the_world_counts(tmp_path):
    results = demo(tmp_path / "d", preset="tiny", stages=["world"])
    truth = pq.read_table(tmp_path / "d" / "world" / "ground_truth.parquet", columns=["dataset"]).to_pandas()
    expected = truth["dataset"].value_counts().to_dict()
    assert results["world"]["counts"] == expected and all(n > 0 for n in expected.values())
    assert json.loads((tmp_path / "d" / "demo.json").read_text())["world"]["counts"] == expected
    assert not (tmp_path / "d" / "manifest.json").exists()  # one stage of seven: the demo is not complete


def test_unknown_stages_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown demo stages"):
        demo(tmp_path / "d", stages=["world", "nope"])
