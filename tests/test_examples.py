"""Every example run config validates, and together they cover every registered method."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import build_config
from tunelab.methods import METHODS

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")
                  if not p.name.startswith("compare-"))  # compare files are checked in tests/compare


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path):
    cfg = build_config(path)
    assert cfg.model.name_or_path and cfg.data.source


def test_examples_cover_every_method():
    used = {m.name for p in EXAMPLES for m in build_config(p).methods()}
    assert used == set(METHODS)
