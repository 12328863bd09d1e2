"""Typed run configuration: one YAML file plus ``key.sub=value`` overrides.

Every key has a documented default; the defaults *are* the built-in main job (LoRA on ``minilm``
with ``rotten_tomatoes``). Validation errors become one :class:`UserError` line naming the field,
the bad value and what is accepted; unknown keys are rejected with a "did you mean".
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.data.augment import TextAugmentConfig
from tunelab.errors import UserError, did_you_mean
from tunelab.methods import METHODS, AnyMethodConfig
from tunelab.methods.lora import LoRAConfig
from tunelab.tasks import DEFAULT_TASK, TASK_CONFIGS, AnyTaskConfig
from tunelab.train.tracking import TRACKERS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Section):
    name_or_path: str = Field(
        "minilm",
        description="Built-in alias (minilm), a local Hugging Face model folder, or a hub id (online only).",
    )
    num_layers: int | None = Field(
        None, ge=1, description="Keep this many of the model's blocks, every k-th ending with the last (k = blocks / "
                                "num_layers; DistilBERT's student initialisation); null = all.")
    keep_layers: list[int] | None = Field(
        None, description="Keep exactly these blocks (0-based indices), e.g. [1, 3, 5]; null = all.")

    @model_validator(mode="after")
    def _one_way_to_shrink(self) -> "ModelConfig":
        if self.num_layers is not None and self.keep_layers is not None:
            raise ValueError("set model.num_layers or model.keep_layers, not both")
        return self


class DistillConfig(_Section):
    """``distill:`` -- knowledge distillation from a teacher into the model being trained (the student);
    see :mod:`tunelab.distill`. Off while ``teacher`` is null."""

    teacher: str | None = Field(
        None, description="Knowledge distillation: a finished run of the same task, or a model with a trained "
                          "head (causal LMs: any model with the student's vocabulary); null = off.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the task loss; the teacher's term gets 1 - alpha.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of both models (the term is scaled by T^2).")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="forward_kl KL(teacher||student) (Hinton et al. 2015), reverse_kl "
                                  "KL(student||teacher), jsd generalised Jensen-Shannon (Agarwal et al. 2024).")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="jsd: mixture weight beta of the teacher.")
    hidden_weight: float = Field(
        0.0, ge=0, description="Weight of the MSE between the features the two heads read (a linear projection "
                               "learns the map when their widths differ); 0 = off.")
    cache_teacher: bool | None = Field(
        None, description="Compute the teacher's outputs once before training (null: when they are fixed per row "
                          "and fit in memory -- classification, images without augmentation).")


class DataConfig(_Section):
    source: str = Field(
        "rotten_tomatoes",
        description="Built-in dataset name, a .jsonl/.json/.csv/.tsv/.parquet file, or a dataset folder.",
    )
    validation_file: str | None = Field(None, description="Separate validation file (else split from train).")
    test_file: str | None = Field(None, description="Separate test file (else split from train).")
    text_column: str | None = Field(None, description="Text column (default: the dataset's, else 'text').")
    text_pair_column: str | None = Field(None, description="Second text column for sentence-pair tasks.")
    label_column: str | None = Field(None, description="Label column (default: the dataset's, else 'label').")
    label_names: list[str] | None = Field(None, description="Fix the label order (id i = label_names[i]).")
    validation_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of train held out for validation.")
    test_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of train held out for test.")
    split_seed: int = Field(42, description="Seed of the train/validation/test split.")
    max_length: int = Field(64, ge=8, description="Truncate token sequences to this length.")
    group_by_length: bool = Field(True, description="Batch similar lengths together (less padding).")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training rows.")
    augment: TextAugmentConfig = Field(
        default_factory=TextAugmentConfig,
        description="EDA text augmentation of the training split (classification; Wei & Zou, 2019).")
    max_eval_samples: int | None = Field(
        None, ge=1, description="Use only the first N rows of the validation and test splits (image tasks).")
    image_column: str | None = Field(None, description="Image-path column of a csv/jsonl (image tasks; default 'image').")
    skip_bad_images: bool = Field(
        False, description="Image tasks: skip (and count) unreadable or missing image files instead of stopping.")
    encoding: str = Field(
        "utf-8", description="Text encoding of csv/tsv/json/jsonl files: a codec name (utf-8, latin-1, cp1252, "
                             "utf-16, ...) or 'auto' to detect it per file (charset-normalizer).")
    drop_empty: bool = Field(
        False, description="Drop (and count) rows whose text is empty or missing; by default such a row stops "
                           "the run with its place in the file.")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        from tunelab.data.readers import check_encoding

        return check_encoding(value)

    @model_validator(mode="after")
    def _ratios(self) -> "DataConfig":
        if self.validation_ratio + self.test_ratio >= 1:
            raise ValueError(
                f"data.validation_ratio + data.test_ratio must be < 1 "
                f"(got {self.validation_ratio} + {self.test_ratio})"
            )
        return self


class TrainConfig(_Section):
    epochs: int = Field(5, ge=1, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    max_seconds: float | None = Field(
        None, gt=0, description="Stop after this much training time in seconds (evaluation not counted): a "
                                "wall-clock budget. The schedule still spans epochs/max_steps.")
    batch_size: int = Field(32, ge=1, description="Training batch size per process.")
    eval_batch_size: int = Field(128, ge=1, description="Evaluation batch size per process.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the adapted parameters.")
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the task head (default: lr).")
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="Layer-wise LR decay: layer l gets lr * decay^(L - l)."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (never on biases/norms).")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="LR schedule after warmup.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm (null: no clipping).")
    eval_strategy: Literal["epoch", "steps", "no"] = Field("epoch", description="When to evaluate.")
    eval_steps: int = Field(100, ge=1, description="Evaluate every N steps when eval_strategy=steps.")
    save_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N steps (default: at each evaluation)."
    )
    save_total_limit: int = Field(2, ge=1, description="Resume checkpoints to keep.")
    metric_for_best: str | None = Field(
        None, description="Validation metric for best checkpoint/early stopping (task default)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    keep_best: bool = Field(True, description="Restore the best validation checkpoint at the end.")
    log_steps: int = Field(10, ge=1, description="Log loss and LR every N steps.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Mixed precision (GPU only; CPU trains in fp32)."
    )
    cache_frozen_trunk: bool = Field(
        False, description="freeze only: compute the frozen lower layers once and reuse them each epoch."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, ~30% more time)."
    )
    report_to: list[Literal[TRACKERS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Experiment trackers (accelerate's) that mirror every metrics.jsonl "
                                          "event, with the config as hyper-parameters; they write under "
                                          "<run>/tracking (MLflow: a local file store; wandb: offline mode).")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        """``report_to: tensorboard`` means ``[tensorboard]``; ``none`` (or null) means no tracker."""
        if value is None or value in ("none", "None"):
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("eval_strategy", "mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML reads a bare ``no`` as False; here it means the option value 'no'."""
        return "no" if value is False else value


class RunConfig(_Section):
    name: str | None = Field(None, description="Run name (default: <method>-<model>-<data>-<time>).")
    output_dir: str = Field("runs", description="Folder that holds run directories.")
    seed: int = Field(42, description="Seed for initialisation, dropout and data order.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    task: AnyTaskConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: TASK_CONFIGS[DEFAULT_TASK](), description="What is learned, and the task's options."
    )
    method: AnyMethodConfig = Field(  # type: ignore[valid-type]
        default_factory=lambda: LoRAConfig(), description="The fine-tuning method and its options."
    )
    extra_methods: list[AnyMethodConfig] = Field(  # type: ignore[valid-type]
        default_factory=list, description="More methods composed with `method` (union of what they train)."
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    def methods(self) -> list[Any]:
        """The primary method followed by the composed ones."""
        return [self.method, *self.extra_methods]


# ---------------------------------------------------------------- loading and overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"malformed YAML in {p}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``key.sub=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise UserError(f"override '{override}' must look like key.sub=value (e.g. train.lr=1e-4)")
    key, raw = override.split("=", 1)
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise UserError(f"override '{override}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise UserError(f"override '{override}': '{part}' is not a section")
            node[part] = child
        node = child
    # Switching method (or task) name starts it from its own defaults.
    if parts[-1] == "name" and parts[:-1] in (["method"], ["task"]) and node.get("name") != value:
        node.clear()
    node[parts[-1]] = value


def build_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML (optional) + overrides -> validated :class:`RunConfig`."""
    data = read_yaml(path) if path else {}
    data = copy.deepcopy(data)
    for o in overrides or []:
        apply_override(data, o)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> RunConfig:
    """Validate plain data; ``method: lora`` is short for ``method: {name: lora}``, and a method
    mapping without a name is the default method (LoRA)."""
    data = _normalise_methods(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(e, data)) from None


def _normalise_methods(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    method = data.get("method")
    if isinstance(method, str):
        data["method"] = {"name": method}
    elif isinstance(method, dict) and "name" not in method:
        data["method"] = {"name": "lora", **method}
    extra = data.get("extra_methods")
    if isinstance(extra, list):
        data["extra_methods"] = [{"name": m} if isinstance(m, str) else m for m in extra]
    task = data.get("task")
    if isinstance(task, str):
        data["task"] = {"name": task}
    elif isinstance(task, dict) and "name" not in task:
        data["task"] = {"name": DEFAULT_TASK, **task}
    return data


def _explain(err: ValidationError, data: dict[str, Any]) -> str:
    """Turn pydantic's first error into one line: field, bad value, what is accepted."""
    first = err.errors()[0]
    loc = [str(x) for x in first["loc"]]
    # Discriminated unions put the tag in the path: method.lora.r -> method.r (and extra_methods.0.x)
    loc = [x for i, x in enumerate(loc)
           if not (x in METHODS and i > 0 and (loc[i - 1] == "method" or loc[i - 1].isdigit()))
           and not (i > 0 and loc[i - 1] == "task" and x in TASK_CONFIGS)]
    field = ".".join(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        return (f"unknown config key '{field}'{did_you_mean(loc[-1], allowed)}; "
                f"accepted under '{'.'.join(loc[:-1]) or 'top level'}': {', '.join(sorted(allowed))}")
    if kind in ("union_tag_invalid", "union_tag_not_found") and loc[:1] == ["task"]:
        given = first.get("input")
        given = given.get("name") if isinstance(given, dict) else given
        return (f"config key 'task.name': unknown task {given!r}{did_you_mean(str(given), TASK_CONFIGS)}; "
                f"accepted: {', '.join(TASK_CONFIGS)}")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        given = first.get("input")
        given = given.get("name") if isinstance(given, dict) else given
        return (f"config key '{field or 'method'}.name': unknown method {given!r}"
                f"{did_you_mean(str(given), METHODS)}; accepted: {', '.join(sorted(METHODS))}")
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"config key '{field}': {first['msg']}{shown}"


def _allowed_keys(loc: list[str], data: dict[str, Any]) -> list[str]:
    """Field names accepted at a config location (for 'did you mean')."""
    model: type[BaseModel] = RunConfig
    node: Any = data
    for part in loc:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if part == "method" or part.isdigit():
            name = node.get("name", "lora") if isinstance(node, dict) else "lora"
            model = METHODS[name].config_cls if name in METHODS else LoRAConfig
            continue
        if part == "extra_methods":
            continue
        if part == "task":
            name = node.get("name", DEFAULT_TASK) if isinstance(node, dict) else DEFAULT_TASK
            model = TASK_CONFIGS.get(name, TASK_CONFIGS[DEFAULT_TASK])
            continue
        ann = model.model_fields[part].annotation if part in model.model_fields else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return list(model.model_fields)


def to_yaml_dict(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data (what the run directory stores)."""
    return cfg.model_dump(mode="json")


def describe_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every config key, for ``--help`` and the docs."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, key + "."))
        elif name == "method":
            rows.append((key + ".name", "lora", "Method: " + ", ".join(sorted(METHODS))))
            rows.extend(r for r in describe_fields(LoRAConfig, key + ".") if r[0] != key + ".name")
        elif name == "task":
            rows.extend(_task_fields(key))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((key, repr(default) if not isinstance(default, list) else str(default),
                         field.description or ""))
    return rows


def _task_fields(key: str) -> list[tuple[str, str, str]]:
    """``task.name`` (the default task's description), then every task's own keys, once each."""
    rows = describe_fields(TASK_CONFIGS[DEFAULT_TASK], key + ".")
    seen = {r[0] for r in rows}
    for config_cls in dict.fromkeys(TASK_CONFIGS.values()):
        for r in describe_fields(config_cls, key + "."):
            if r[0] not in seen:
                seen.add(r[0])
                rows.append(r)
    return rows
