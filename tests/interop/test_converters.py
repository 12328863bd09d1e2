"""Every peft type a method spec names has a converter, and each converter imports as such a method."""

from __future__ import annotations

from tunelab.interop.peft_format import CONVERTERS, exportable_methods, supported
from tunelab.methods import METHODS


def test_every_named_peft_type_has_a_converter() -> None:
    named = {s.peft_type for s in METHODS.values() if s.peft_type is not None}
    assert named == set(CONVERTERS)
    assert exportable_methods() == ["lora", "ia3", "prompt_tuning", "prefix_tuning", "ptuning_v2"]
    assert supported() == "ia3, lora, prefix_tuning, prompt_tuning, ptuning_v2"


def test_converters_import_as_a_method_of_their_type() -> None:
    for peft_type, converter in CONVERTERS.items():
        assert converter.peft_type == peft_type
        assert METHODS[converter.imports_as].peft_type == peft_type
    assert CONVERTERS["PREFIX_TUNING"].imports_as == "ptuning_v2"
