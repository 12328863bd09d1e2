"""Config: defaults are the main job, overrides, validation messages, help text."""

from __future__ import annotations

import pytest

from tunelab.cli import main
from tunelab.config import RunConfig, build_config, describe_fields, to_yaml_dict, validate_config
from tunelab.errors import UserError


def test_defaults_are_the_main_job():
    cfg = build_config()
    assert (cfg.model.name_or_path, cfg.data.source, cfg.method.name) == ("minilm", "rotten_tomatoes", "lora")
    assert cfg.task.name == "classification"


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 2\nmethod:\n  name: lora\n  r: 4\n")
    cfg = build_config(path, ["train.lr=3e-4", "method.alpha=8", "data.label_names=[neg, pos]",
                              "train.eval_strategy=no"])
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 2
    assert (cfg.method.r, cfg.method.alpha) == (4, 8)
    assert cfg.data.label_names == ["neg", "pos"] and cfg.train.eval_strategy == "no"


def test_switching_method_starts_from_its_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: lora\n  r: 4\n")
    cfg = build_config(path, ["method.name=freeze", "method.top_layers=2"])
    assert cfg.method.name == "freeze" and cfg.method.top_layers == 2


def test_method_shorthand_and_composition():
    cfg = validate_config({"method": "bitfit", "extra_methods": ["lora"]})
    assert [m.name for m in cfg.methods()] == ["bitfit", "lora"]


def test_resolved_config_round_trips():
    cfg = build_config(None, ["method.r=16", "train.head_lr=1e-3"])
    assert validate_config(to_yaml_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides,needle", [
    (["data.sourse=x"], "did you mean 'source'"),
    (["method.alpah=4"], "did you mean 'alpha'"),
    (["data.validation_ratio=0.6", "data.test_ratio=0.5"], "must be < 1"),
    (["train.epochs=0"], "train.epochs"),
    (["lr"], "key.sub=value"),
    (["method.dropout=1.5"], "method.dropout"),
])
def test_validation_messages(overrides, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        build_config(None, overrides)


def test_every_field_is_documented():
    rows = describe_fields()
    assert all(desc for _, _, desc in rows), [k for k, _, d in rows if not d]
    keys = {k for k, _, _ in rows}
    assert {"train.lr", "data.source", "model.name_or_path", "method.name", "method.r"} <= keys


def test_train_help_lists_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("train.lr", "train.early_stopping_patience", "data.max_length", "method.target_modules"):
        assert key in out


def test_methods_verb_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "freeze", "bitfit", "lora", "top_layers", "target_modules"):
        assert name in out
    assert RunConfig.model_fields["method"].description


def test_unknown_key_inside_extra_methods():
    with pytest.raises(UserError, match=r"extra_methods\.0\.top_layer.*did you mean 'top_layers'"):
        validate_config({"method": "lora", "extra_methods": [{"name": "freeze", "top_layer": 1}]})


@pytest.mark.parametrize("method", ["full", "freeze", "bitfit", "lora", "ia3", "adapter", "parallel_adapter"])
def test_every_method_config_round_trips_through_the_saved_yaml(method):
    extra = {"freeze": ["method.top_layers=1"], "adapter": ["method.bottleneck=8"],
             "parallel_adapter": ["method.bottleneck=8"], "lora": ["method.use_dora=true"]}
    cfg = build_config(None, [f"method.name={method}", *extra.get(method, [])])
    assert validate_config(to_yaml_dict(cfg)) == cfg
