"""The run directory: the contract between ``train`` and ``eval``/``predict``/``export``/``compare``.

``runs/<name>/`` holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``results.json``,
``model/weights.safetensors`` (only what trained: adapter + head for LoRA), ``model/`` tokenizer
files, ``label_map.json``, ``base_fingerprint.json``, ``checkpoints/`` for resume, ``best/`` and a
model card ``README.md``. Nothing here is pickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import UserError
from tunelab.train.checkpoint import load_tensors, save_tensors, trainable_state, write_atomic_text


class RunDir:
    """Paths and small readers/writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---------------------------------------------------------------- paths
    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    results = property(lambda self: self.path / "results.json")
    model_dir = property(lambda self: self.path / "model")
    weights = property(lambda self: self.path / "model" / "weights.safetensors")
    label_map = property(lambda self: self.path / "label_map.json")
    fingerprint = property(lambda self: self.path / "base_fingerprint.json")
    card = property(lambda self: self.path / "README.md")
    checkpoints = property(lambda self: self.path / "checkpoints")

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool) -> "RunDir":
        """Make a new run directory; an existing one is refused unless ``overwrite``."""
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            if not overwrite:
                raise UserError(f"run directory {run.path} already exists; pass --overwrite to replace it "
                                f"or --resume {run.path} to continue it")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (for eval/predict/resume)."""
        run = cls(path)
        if not run.config.is_file():
            raise UserError(f"{run.path} is not a tunelab run directory (no config.yaml)")
        return run

    @property
    def finished(self) -> bool:
        return self.results.is_file()

    # ---------------------------------------------------------------- writers
    def write_config(self, data: dict[str, Any]) -> None:
        write_atomic_text(self.config, yaml.safe_dump(data, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """The resolved config; a damaged file is one :class:`UserError` naming it."""
        try:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.config} is damaged ({_first_line(exc)}); it is the run's resolved config: "
                            "restore it or train again") from None
        if data is not None and not isinstance(data, dict):
            raise UserError(f"{self.config} is damaged: it holds a {type(data).__name__}, not the run's config")
        return data or {}

    def log(self, event: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop events logged after the checkpoint so the log reads as one run."""
        if not self.metrics.is_file():
            return
        keep = [json.dumps(event) for event in self._read_events() if event.get("step", 0) <= step]
        write_atomic_text(self.metrics, "".join(line + "\n" for line in keep))

    def _read_events(self) -> list[dict[str, Any]]:
        """Every event of ``metrics.jsonl``; a line a killed process left half-written is skipped."""
        events = []
        for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def events(self, **match: Any) -> list[dict[str, Any]]:
        """Logged events whose fields equal ``match`` (e.g. ``event="eval", split="baseline"``)."""
        if not self.metrics.is_file():
            return []
        rows = self._read_events()
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    def write_jsonl(self, path: Path, rows: list[dict[str, Any]]) -> None:
        write_atomic_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_json(self, path: Path, data: Any) -> None:
        write_atomic_text(path, json.dumps(data, indent=2) + "\n")

    def read_json(self, path: Path) -> Any:
        """A JSON file of the run; a damaged one is one :class:`UserError` naming it."""
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is damaged ({_first_line(exc)}); restore it or train again") from None

    def save_weights(self, model) -> int:
        """Save the trainable tensors (adapter-only where the method allows); return bytes."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.weights.with_name("weights.safetensors.tmp")
        save_tensors(trainable_state(model), tmp, metadata={"format": "pt", "producer": "tunelab"})
        tmp.replace(self.weights)
        return self.weights.stat().st_size

    def load_weights(self) -> dict:
        if not self.weights.is_file():
            raise UserError(f"run {self.path} has no trained weights ({self.weights}); did training finish?")
        return load_tensors(self.weights)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _baseline_line(results: dict[str, Any]) -> str:
    base = results.get("baseline") or {}
    scores = ", ".join(f"{k} {v:.4f}" for k, v in base.items() if isinstance(v, float))
    return f"\n- **Before training:** {scores}" if scores else ""


def _usage(cfg: dict[str, Any], path: Path) -> str:
    from tunelab.tasks import TASK_SPECS

    spec = TASK_SPECS.get(cfg["task"]["name"])
    if spec is not None and spec.generates_text:
        return f'`tunelab eval {path}`, `tunelab generate {path} --prompt "..."` or `tunelab chat {path}`'
    example = spec.predict_example if spec is not None else '"some text"'
    return f'`tunelab eval {path}` or `tunelab predict {path} {example}`'


def write_model_card(run: RunDir, cfg: dict[str, Any], results: dict[str, Any]) -> None:
    """A short README for the run: what was trained, how, and how well."""
    test = results.get("test", {})
    scores = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    method = cfg["method"]["name"] + "".join(f" + {m['name']}" for m in cfg.get("extra_methods", []))
    p = results["params"]
    text = f"""# {run.path.name}

Fine-tuned with [tunelab](https://pypi.org/project/tunelab/).

- **Base model:** `{cfg['model']['name_or_path']}` (fingerprint `{results.get('base_fingerprint', '?')}`)
- **Task:** {cfg['task']['name']} on `{cfg['data']['source']}`
- **Method:** {method}; trainable {p['trainable']:,} of {p['total']:,} parameters ({p['trainable_percent']:.3f}%)
- **Training:** {results['global_step']} steps, {results['train_seconds']:.1f} s, {results['samples_per_second']:.1f} samples/s, peak memory {results['peak_memory_mb']:.0f} MB
- **Test:** {scores or 'no test split'}{_baseline_line(results)}

Load it with {_usage(cfg, run.path)}.
The weights in `model/weights.safetensors` hold only what trained; `config.yaml` says how to rebuild the rest.
"""
    write_atomic_text(run.card, text)
