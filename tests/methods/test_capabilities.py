"""Method capabilities live on the spec: the name tables other modules use are derived from it."""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.adapters import SUPPORTED_METHODS
from tunelab.interop.merged import mergeable_methods
from tunelab.methods import LINEAR_REWRAPPERS, METHODS, VIRTUAL_TOKEN_METHODS

SRC = Path(__file__).resolve().parents[2] / "src" / "tunelab"


def test_derived_name_tables() -> None:
    assert LINEAR_REWRAPPERS == ("lora", "qlora", "ia3")
    assert VIRTUAL_TOKEN_METHODS == ("prompt_tuning", "prefix_tuning", "ptuning_v2")
    assert SUPPORTED_METHODS == ("lora", "ia3", "adapter", "parallel_adapter", "bitfit")
    assert mergeable_methods() == ["bitfit", "freeze", "full", "ia3", "lora", "qlora"]
    assert [n for n, s in METHODS.items() if s.trains_everything] == ["full"]
    assert {n: s.peft_type for n, s in METHODS.items() if s.peft_type} == {
        "lora": "LORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING", "prefix_tuning": "PREFIX_TUNING",
        "ptuning_v2": "PREFIX_TUNING"}


def test_refusals_are_worded() -> None:
    """A method an adapter set refuses says why; a mergeable method has no refusal text."""
    for name, spec in METHODS.items():
        assert spec.swappable != bool(spec.why_not_swappable), name
        assert not (spec.mergeable and spec.why_not_mergeable), name
        assert not (spec.in_place and spec.merge_modules), name


def test_methods_do_not_import_interop() -> None:
    """The dependency runs one way: interop reads method specs, methods never import interop."""
    imports = re.compile(r"^\s*(from|import) tunelab\.interop", re.MULTILINE)
    offenders = [p.name for p in (SRC / "methods").glob("*.py") if imports.search(p.read_text())]
    assert offenders == []
