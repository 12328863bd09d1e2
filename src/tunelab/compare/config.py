"""The ``tunelab compare`` file: shared run settings, the runs to compare, and how to rank them.

A compare file::

    name: sentiment                  # folder under output_dir (default: the file's name without extension)
    output_dir: runs
    base:                            # run config keys every run shares: model, data, task, train, seed
      model: {name_or_path: minilm}
      train: {epochs: 2, batch_size: 32}
    runs:
      - full                         # a method name ...
      - method: {name: lora, r: 16}  # ... or a mapping: method options, more methods, per-run overrides
        set: {train.lr: 5.0e-4}
      - {label: lora-bitfit, method: lora, extra_methods: [bitfit]}
    budget: params                   # rank by params, memory, time, artifact or latency
    metric: accuracy                 # default by task
    tolerance: 0.01
    seeds: [1, 2, 3]                 # optional: every run once per seed (mean, std, intervals, tests)
    data_sizes: [200, 800, all]      # optional: nested training subsets (learning curves)
    budget_seconds: 120              # optional: equal wall-clock training time per run
    max_memory_mb: 4000              # optional hard limits: runs over them are never recommended
    max_params: 1000000

:func:`load_compare` reads and checks the file; :func:`plan_runs` names every run, merges ``base`` with the
run's method and overrides, and validates each run config exactly as ``tunelab train`` does (plus the
method-composition and task x method checks that training would only make after loading). Every mistake is
one :class:`~tunelab.errors.UserError` line before anything runs or is written.

The grid: with ``seeds`` and/or ``data_sizes``, each ``runs`` entry (a *group*) becomes one run per seed and
size, labelled ``<label>-seed<s>-n<size>`` and ordered size by size (smallest first), seed by seed, so the
first finished runs already compare every method. ``seeds`` sets each run's ``seed``, ``data_sizes`` its
``data.max_train_samples`` (the first N rows of the shuffled training split: nested subsets) and
``budget_seconds`` its ``train.max_seconds``; ``base`` may not set those keys too.

Same budget, same data: a run may not override ``seed``, ``train.epochs``, ``train.max_steps`` or
``train.max_seconds`` (the budget), ``task.*`` (the task), ``model.*`` or the keys that choose the data and
its test split; they come from ``base``, so every run trains as long, on the same rows, and is scored on
the same test split.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.config import RunConfig, read_yaml, to_yaml_dict, validate_config
from tunelab.errors import UserError, did_you_mean, unknown
from tunelab.methods import METHODS, check_composition

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+,=-]{0,99}$")
"""Run labels and compare names become folder and file names: letters, digits and ``._+,=-``."""

RUN_KEYS = ("method", "extra_methods", "name", "output_dir")
"""Run config keys that ``base`` may not hold: each run brings its methods; the comparison names and places runs."""

SAME_BUDGET = ("seed", "train.epochs", "train.max_steps", "train.max_seconds")
SAME_DATA = ("model", "data.source", "data.validation_file", "data.test_file", "data.validation_ratio",
             "data.test_ratio", "data.split_seed", "data.max_train_samples")
def _method_name(value: Any, where: str) -> str:
    """The method a ``method``/``extra_methods`` entry names; unknown names get a "did you mean"."""
    name = value.get("name") if isinstance(value, dict) else value
    if not isinstance(value, (str, dict)) or not isinstance(name, str):
        raise ValueError(f"{where} must be a method name (lora) or a mapping of its options with a name "
                         f"({{name: lora, r: 16}})")
    if name not in METHODS:
        raise ValueError(str(unknown("method", name, METHODS)))
    return name


class RunSpec(BaseModel):
    """One entry of ``runs``: a method name, or this mapping."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(
        None, description="Name of the run: its folder, log and report row (default: the method name plus the "
                          "options that tell it apart from other runs of that method, e.g. lora-r16).")
    method: Any = Field(description="The method: a name (lora) or a mapping of its options ({name: lora, r: 16}).")
    extra_methods: list[Any] = Field(
        default_factory=list,
        description="More methods composed with `method` (names or mappings), as in a run config.")
    set: dict[str, Any] = Field(
        default_factory=dict, description="This run's overrides of base keys, dotted (train.lr: 5.0e-4, "
                                          "data.max_length: 128); seed, epochs, max_steps, task, model and data "
                                          "split keys cannot differ between runs.")

    @field_validator("method", mode="after")
    @classmethod
    def _known_method(cls, value: Any) -> Any:
        _method_name(value, "method")
        return value

    @field_validator("extra_methods", mode="after")
    @classmethod
    def _known_extra(cls, value: list[Any]) -> list[Any]:
        for item in value:
            _method_name(item, "each extra method")
        return value

    @field_validator("label", mode="after")
    @classmethod
    def _safe_label(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_PATTERN.match(value):
            raise ValueError("a label names a folder: use letters, digits and ._+,=- (up to 100, no spaces or "
                             "slashes)")
        return value

    @property
    def methods(self) -> list[str]:
        """Method names, primary first."""
        return [_method_name(m, "method") for m in (self.method, *self.extra_methods)]


class CompareConfig(BaseModel):
    """What ``tunelab compare CONFIG`` reads."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, description="Folder of the comparison under output_dir (default: the compare file's name "
                          "without extension).")
    output_dir: str = Field("runs", description="Folder that holds comparison folders.")
    base: dict[str, Any] = Field(
        default_factory=dict, description="Run config keys every run shares: model, data, task, train, seed "
                                          "(not method, extra_methods, name or output_dir).")
    runs: list[RunSpec] = Field(
        min_length=1, description="The runs, in order: method names, or mappings with label, method, "
                                  "extra_methods and set.")
    budget: Literal["params", "memory", "time", "artifact", "latency"] = Field(
        "params", description="Cost the recommendation minimises: trainable parameters, peak memory, training "
                              "time, artifact size (the saved weights) or inference latency (ms per test row).")
    seeds: list[int] | None = Field(
        None, min_length=1, description="Train every run once per seed (each seed seeds initialisation and data "
                                        "order; the data split stays data.split_seed): the report shows mean ± std "
                                        "and a 95% interval, and tests differences. Default: base's seed, once.")
    data_sizes: list[int | Literal["all"]] | None = Field(
        None, min_length=1, description="Train every run on nested training subsets of these sizes (the first N "
                                        "training rows, 'all' for every row), scored on the same test split: "
                                        "learning curves and a recommendation by data size.")
    budget_seconds: float | None = Field(
        None, gt=0, description="Equal wall-clock budget: every run stops after this much training time "
                                "(train.max_seconds), instead of only at its epochs or steps.")
    max_memory_mb: float | None = Field(
        None, gt=0, description="Hard limit: runs whose peak memory exceeds it are marked and never recommended.")
    max_params: int | None = Field(
        None, ge=1, description="Hard limit: runs that train more parameters are marked and never recommended.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the intervals and of the tie tests "
                                                                "(a difference is significant when p < 1 - level).")
    resamples: int = Field(2000, ge=100, le=100_000, description="Bootstrap resamples of the test rows.")
    metric: str | None = Field(
        None, description="Test metric to compare (default by task: accuracy, rmse; sft: rouge_l when "
                          "generations are scored, else loss).")
    tolerance: float = Field(
        0.01, ge=0, lt=1, description="A cheaper run is recommended when its metric is within this fraction "
                                      "of the best run's.")

    @field_validator("base", "runs", mode="before")
    @classmethod
    def _empty(cls, value: Any, info: Any) -> Any:
        """An empty YAML key (``base:``) reads as null: no shared keys, or no runs."""
        if value is None:
            return {} if info.field_name == "base" else []
        if info.field_name == "runs" and isinstance(value, list):
            return [{"method": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("seeds", mode="after")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            twice = sorted({s for s in value if value.count(s) > 1})
            if twice:
                raise ValueError(f"seed {twice[0]} is listed more than once; every seed must be distinct")
        return value

    @field_validator("data_sizes", mode="after")
    @classmethod
    def _distinct_sizes(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is None:
            return value
        for size in value:
            if size != "all" and size < 1:
                raise ValueError(f"a data size is a number of training rows (1 or more) or 'all'; got {size}")
        twice = sorted({str(s) for s in value if value.count(s) > 1})
        if twice:
            raise ValueError(f"data size {twice[0]} is listed more than once; every size must be distinct")
        return sorted(value, key=lambda s: (s == "all", 0 if s == "all" else s))

    @field_validator("base", mode="after")
    @classmethod
    def _no_run_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        given = next((k for k in RUN_KEYS if k in value), None)
        if given in ("method", "extra_methods"):
            raise ValueError(f"'{given}' cannot be shared: give each run its methods (runs: [lora, bitfit], or "
                             "method and extra_methods in a run)")
        if given:
            raise ValueError(f"'{given}' cannot be shared: each run goes to <output_dir>/<name>/runs/<label>; "
                             "set name and output_dir at the top of the compare file")
        return value

    @field_validator("name", mode="after")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_PATTERN.match(value):
            raise ValueError("the name is a folder: use letters, digits and ._+,=- (no spaces or slashes)")
        return value


# ---------------------------------------------------------------------------- reading

def load_compare(path: str | Path) -> CompareConfig:
    """Read and check a compare file; ``name`` defaults to the file's stem."""
    data = read_yaml(path)
    try:
        cfg = CompareConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(_explain(e)) from None
    if cfg.name is None:
        stem = Path(path).stem
        if not LABEL_PATTERN.match(stem):
            raise UserError(f"compare file name '{stem}' cannot name a folder; set name: in the file")
        cfg.name = stem
    return cfg


def _where(loc: tuple[Any, ...]) -> str:
    """``("runs", 2, "method")`` -> ``runs[2].method``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(err: ValidationError) -> str:
    """pydantic's first error as one line: key, problem, what is accepted (a misspelt key before the missing
    one it was meant to be)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    where, kind = _where(loc), first["type"]
    if loc == ("runs",) and kind in ("missing", "too_short"):
        return ("compare config key 'runs': no runs to compare; list at least one method, "
                "e.g. runs: [lora, bitfit]")
    if kind == "extra_forbidden":
        model = RunSpec if loc[0] == "runs" else CompareConfig
        allowed = sorted(model.model_fields)
        return (f"unknown compare config key '{where}'{did_you_mean(str(loc[-1]), allowed)}; accepted"
                f"{' in a run' if model is RunSpec else ''}: {', '.join(allowed)}")
    value = first.get("input")
    shown = "" if kind == "value_error" or isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"compare config key '{where}': {first['msg'].removeprefix('Value error, ')}{shown}"


# ---------------------------------------------------------------------------- planning

@dataclass
class PlannedRun:
    """One run of a comparison: its label, its validated run config and its place in the grid (the
    ``runs`` entry it comes from, its seed, its training-set size)."""

    label: str
    config: RunConfig
    group: str = ""
    """Label of the ``runs`` entry (the method variant); seeds and sizes of one entry share it."""
    seed: int | None = None
    size: int | str | None = None
    """The entry of ``data_sizes`` (None when the comparison does not sweep sizes)."""
    train_rows: int | None = None
    """Training rows the run learns from (known when sizes are swept)."""

    def __post_init__(self) -> None:
        self.group = self.group or self.label

    @property
    def data(self) -> dict[str, Any]:
        """The resolved run config as plain data (what ``<run>/config.yaml`` holds)."""
        return to_yaml_dict(self.config)

    @property
    def methods(self) -> list[str]:
        return [m.name for m in self.config.methods()]


def compare_dir(cfg: CompareConfig) -> Path:
    """``<output_dir>/<name>``: configs/, runs/, logs/ and the reports."""
    return Path(cfg.output_dir) / str(cfg.name)


def plan_runs(cfg: CompareConfig, out_dir: str | Path) -> list[PlannedRun]:
    """Label, merge and validate every run (run directories go under ``out_dir/runs``); nothing is written."""
    _check_base(cfg.base)
    sets = [flatten(spec.set) for spec in cfg.runs]
    for i, flat in enumerate(sets):
        for key in flat:
            check_set_key(i, key)
    _check_grid(cfg)
    labels = run_labels(cfg.runs, sets)
    seeds = cfg.seeds or [None]
    sizes = cfg.data_sizes or [None]
    runs = []
    for size in sizes:  # smallest size first, every method once per seed: early results are comparable
        for seed in seeds:
            for label, spec, flat in zip(labels, cfg.runs, sets):
                name = label + ("" if seed is None else f"-seed{seed}") + ("" if size is None else f"-n{size}")
                data = merged_config(cfg.base, spec, {**flat, **grid_overrides(cfg, seed, size)})
                runs.append(PlannedRun(name, _validate_run(name, data, Path(out_dir)), label, seed, size))
    check_metric(cfg.metric, runs[0].config)
    check_budget_measurable(cfg.budget, runs[0].config)
    if cfg.data_sizes:
        available = count_training_rows(runs[0].config)
        check_sizes(cfg.data_sizes, available)
        for run in runs:
            run.train_rows = available if run.size == "all" else int(run.size)
    return runs


def grid_overrides(cfg: CompareConfig, seed: int | None, size: int | str | None) -> dict[str, Any]:
    """The keys one cell of the grid sets: its seed, its training-set size, the time budget."""
    out: dict[str, Any] = {}
    if seed is not None:
        out["seed"] = seed
    if size is not None:
        out["data.max_train_samples"] = None if size == "all" else size
    if cfg.budget_seconds is not None:
        out["train.max_seconds"] = cfg.budget_seconds
    return out


def _check_grid(cfg: CompareConfig) -> None:
    """``seeds``/``data_sizes``/``budget_seconds`` own the keys they set: base may not set them too."""
    flat = flatten(cfg.base)
    owned = (("seeds", "seed"), ("data_sizes", "data.max_train_samples"), ("budget_seconds", "train.max_seconds"))
    for key, base_key in owned:
        if getattr(cfg, key) is not None and base_key in flat:
            raise UserError(f"compare config: '{key}' sets each run's {base_key}; remove {base_key} from base "
                            f"(or drop {key})")


def check_budget_measurable(budget: str, cfg: RunConfig) -> None:
    """``latency`` is measured on the test split: a config without one cannot rank by it."""
    d = cfg.data
    if budget == "latency" and not (d.test_file or d.test_ratio):
        raise UserError("compare config key 'budget': 'latency' is measured on the test split, and these runs have "
                        "none (base data.test_ratio is 0 and no data.test_file); set one, or rank by params, "
                        "memory, time or artifact")


def count_training_rows(cfg: RunConfig) -> int:
    """Training rows the task reads from the base config's data (all of them, before any subset)."""
    from tunelab.tasks import get_task

    probe = cfg.model_copy(deep=True)
    probe.data.max_train_samples = None
    if hasattr(probe.task, "packing"):
        probe.task.packing = False  # count examples, not packed sequences
    task = get_task(probe.task)
    data = task.prepare(probe, task.load_processor(task.resolve_model(probe.model.name_or_path)))
    return len(data.rows["train"])


def check_sizes(sizes: list[int | str], available: int) -> None:
    """Every data size must fit in the training rows there are."""
    too_big = [s for s in sizes if s != "all" and s > available]
    if too_big:
        raise UserError(f"compare config key 'data_sizes': {too_big[0]} training rows asked, but the data has "
                        f"{available:,} training rows (after the validation/test split); use sizes up to "
                        f"{available} or 'all'")


def _check_base(base: dict[str, Any]) -> None:
    """``base`` alone must be a valid run config (its mistakes are reported as base's, once)."""
    try:
        validate_config(base)
    except UserError as e:
        raise UserError(f"compare config 'base': {e}") from None


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{train: {lr: 1}}`` and ``{train.lr: 1}`` both become ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _covers(key: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if key == p or key.startswith(p + ".")), None)


def check_set_key(index: int, key: str) -> None:
    """Refuse per-run overrides that would make the runs incomparable (or that have their own run key)."""
    where = f"compare config key 'runs[{index}].set'"
    if _covers(key, SAME_BUDGET):
        raise UserError(f"{where}: '{key}' cannot differ between runs: it would break the same-budget comparison "
                        "(every run trains the same epochs or steps with the same seed); set it in base")
    if _covers(key, ("task",)) and not _comparable_task_option(key):
        raise UserError(f"{where}: '{key}' cannot differ between runs: every run must solve the same task "
                        "to be compared; set task options in base")
    if _covers(key, SAME_DATA):
        raise UserError(f"{where}: '{key}' cannot differ between runs: every run must use the same base model, "
                        "training rows and test split; set it in base")
    if _covers(key, ("method", "extra_methods")):
        raise UserError(f"{where}: '{key}': give a run's methods and their options with its method and "
                        "extra_methods keys (method: {name: lora, r: 16})")
    if _covers(key, ("name", "output_dir")):
        raise UserError(f"{where}: '{key}': the comparison names and places each run itself; use the run's "
                        "label to name it")


def _comparable_task_option(key: str) -> bool:
    """``task.<option>...`` where a registered task lets ``<option>`` differ between compared runs."""
    from tunelab.tasks import TASK_SPECS

    parts = key.split(".")
    return len(parts) > 1 and any(parts[1] in spec.comparable_options for spec in TASK_SPECS.values())


def merged_config(base: dict[str, Any], spec: RunSpec, flat_set: dict[str, Any]) -> dict[str, Any]:
    """``base`` + the run's methods + its dotted overrides, as plain run config data."""
    data = copy.deepcopy(base)
    data["method"] = copy.deepcopy(spec.method)
    if spec.extra_methods:
        data["extra_methods"] = copy.deepcopy(spec.extra_methods)
    for key, value in flat_set.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"compare config: cannot set '{key}': '{part}' in base is not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return data


def _validate_run(label: str, data: dict[str, Any], out_dir: Path) -> RunConfig:
    """The run config as ``tunelab train`` will read it, plus the checks training makes after loading."""
    from tunelab.pipeline import check_task_methods

    try:
        cfg = validate_config({**data, "name": label, "output_dir": str(out_dir / "runs")})
        check_composition(cfg.methods())
        check_task_methods(cfg)
    except UserError as e:
        raise UserError(f"run '{label}': {e}") from None
    return cfg


def check_metric(metric: str | None, cfg: RunConfig) -> None:
    """A chosen metric must be one the task reports (and that its options make it report)."""
    from tunelab.tasks import get_spec

    if metric is None:
        return
    spec = get_spec(cfg.task.name)
    accepted = tuple(spec.metrics)
    if metric not in accepted:
        raise UserError(f"compare config key 'metric': {spec.name} runs do not report '{metric}'"
                        f"{did_you_mean(metric, accepted)}; accepted: {', '.join(accepted)}")
    problem = spec.extra_metric_checks(cfg.task, metric)
    if problem:
        raise UserError(f"compare config key 'metric': {problem}")


# ---------------------------------------------------------------------------- labels

def run_labels(specs: list[RunSpec], sets: list[dict[str, Any]]) -> list[str]:
    """Given labels, else the method names (``lora+bitfit``) plus the options that set a run apart from
    the other runs of the same methods (``lora-r16``, ``lora-lr0.0005``); duplicates are refused."""
    bases = ["+".join(spec.methods) for spec in specs]
    options = [_options(spec, flat) for spec, flat in zip(specs, sets)]
    labels = []
    for spec, base, opts in zip(specs, bases, options):
        if spec.label:
            labels.append(spec.label)
            continue
        group = [o for b, o in zip(bases, options) if b == base]
        keys = [k for k in dict.fromkeys(k for o in group for k in o)
                if len({_canonical(o.get(k, _MISSING)) for o in group}) > 1]
        labels.append("-".join([base, *(_label_part(k, opts[k]) for k in keys if k in opts)]))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise UserError(f"compare config: runs[{seen[label]}] and runs[{i}] are both labelled '{label}'; "
                            "give them distinct label: keys (or different options)")
        seen[label] = i
    return labels


_MISSING = object()


def _options(spec: RunSpec, flat_set: dict[str, Any]) -> dict[str, Any]:
    """The options a run gives: method options by name, overrides by their last key (``train.lr`` -> lr)."""
    method = spec.method if isinstance(spec.method, dict) else {}
    opts = {k: v for k, v in method.items() if k != "name"}
    opts.update({key.rsplit(".", 1)[-1]: value for key, value in flat_set.items()})
    return opts


def _canonical(value: Any) -> str:
    return "<default>" if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


def _label_part(key: str, value: Any) -> str:
    """``r16``, ``lr0.0005``, ``use_dora``, ``no-use_dora``, ``target_modules-all-linear``."""
    if isinstance(value, bool):
        text = key if value else f"no-{key}"
    elif isinstance(value, (int, float)):
        text = f"{key}{value:g}"
    elif isinstance(value, (list, tuple)):
        text = f"{key}-{','.join(str(v) for v in value)}"
    else:
        text = f"{key}-{value}"
    return re.sub(r"[^A-Za-z0-9._+,=-]", "_", text)
