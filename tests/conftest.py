"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny-preset synthetic world of seed 4 (folder), generated once per session; tests only read it."""
    from oodlab.data.synth import synth

    out = tmp_path_factory.mktemp("w") / "world"
    synth(out, preset="tiny", seed=4, workers=0)
    return out
