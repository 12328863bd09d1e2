"""The ``tunelab`` command: train, eval, predict, export, import-peft, methods.

User mistakes print one line and exit with code 2 (``--debug`` shows the traceback). The last line
``train`` prints is the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunelab.errors import TrainingDiverged, UserError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# ---------------------------------------------------------------------------- verbs

def cmd_train(args: argparse.Namespace) -> int:
    from tunelab import pipeline
    from tunelab.config import build_config

    config_path, overrides = _split_config_args(args.args)
    if args.resume:
        if config_path or overrides:
            raise UserError("--resume continues a run with its saved config; drop the config file and overrides")
        cfg = pipeline.resume_config(args.resume)
    else:
        cfg = build_config(config_path, overrides)
    run_dir = pipeline.train(cfg, overwrite=args.overwrite, resume=args.resume)
    if _is_main_process():
        _print_summary(run_dir)
        print(run_dir)
    return 0


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    config = [a for a in items if "=" not in a]
    if len(config) > 1:
        raise UserError(f"expected at most one config file, got {config}; overrides look like key=value")
    return (config[0] if config else None), [a for a in items if "=" in a]


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _print_summary(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    results = json.loads((run_dir / "results.json").read_text())
    table = Table(title=f"tunelab: {run_dir.name}")
    for col in ("metric", "value"):
        table.add_column(col)
    for key in ("accuracy", "f1", "f1_macro", "auc_roc", "rmse", "mae", "r2"):
        value = results["test"].get(key)
        if isinstance(value, float):
            table.add_row(f"test {key}", f"{value:.4f}")
    p = results["params"]
    table.add_row("trainable params", f"{p['trainable']:,} / {p['total']:,} ({p['trainable_percent']:.3f}%)")
    table.add_row("train time", f"{results['train_seconds']:.1f} s ({results['samples_per_second']:.1f} samples/s)")
    table.add_row("peak memory", f"{results['peak_memory_mb']:.0f} MB")
    Console(stderr=False).print(table)


def cmd_eval(args: argparse.Namespace) -> int:
    from tunelab import pipeline

    loaded = pipeline.load_run(args.run)
    if not args.data and not loaded.cfg.data.source:
        raise UserError(f"run {args.run} names no data source (imported without --data); "
                        "pass --data FILE with labelled rows")
    metrics = pipeline.evaluate_run(loaded, args.data, args.split)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from datasets import Dataset

    from tunelab import pipeline
    from tunelab.data.readers import load_source

    if bool(args.texts) == bool(args.file):
        raise UserError("give texts to classify, or --file in.jsonl (with --out), not both and not neither")
    loaded = pipeline.load_run(args.run)
    if args.file:
        rows = load_source(args.file)["train"]
    else:
        rows = Dataset.from_dict({pipeline.resolve_columns(loaded.cfg).text: list(args.texts)})
    preds = pipeline.predict_texts(loaded, rows)
    lines = [json.dumps({**row, **pred}) for row, pred in zip(rows, preds)]
    if args.out:
        Path(args.out).write_text("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} predictions to {args.out}")
    else:
        print("\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tunelab.interop import export_run

    out = export_run(args.run, args.format, args.out, overwrite=args.overwrite)
    print(f"exported {args.run} as {args.format} to:")
    print(out)
    return 0


def cmd_import_peft(args: argparse.Namespace) -> int:
    from tunelab.interop import from_peft

    out = from_peft(args.peft_dir, args.out, model=args.model, data=args.data, overrides=args.overrides,
                    overwrite=args.overwrite)
    print(f"imported peft adapter {args.peft_dir} as run:")
    print(out)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from tunelab.methods import METHODS

    width = max(len(name) for name in METHODS)
    for spec in METHODS.values():
        print(f"{spec.name:{width}s}  {spec.description}")
        for name, field in spec.config_cls.model_fields.items():
            if name == "name":
                continue
            default = field.get_default(call_default_factory=True)
            print(f"    {name} = {default!r}: {field.description or ''}")
    return 0


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from tunelab.config import describe_fields

    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune pretrained models with any method.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = "\n".join(f"  {k:34s} {d:14.14s} {desc}" for k, d, desc in describe_fields())
    p = sub.add_parser("train", help="fine-tune a model (no arguments: LoRA on minilm + rotten_tomatoes)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (default, meaning); override any with key.sub=value:\n" + keys)
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value",
                   help="optional YAML config, then overrides such as train.lr=1e-4 method.r=16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its latest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on its test split or another labelled file")
    p.add_argument("run")
    p.add_argument("--data", help="labelled file or folder (default: the run's own test split)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict labels for texts or a file")
    p.add_argument("run")
    p.add_argument("texts", nargs="*")
    p.add_argument("--file", help="input .jsonl/.csv/... with the run's text column")
    p.add_argument("--out", help="write predictions as JSON lines here")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a run as a peft adapter or as a merged transformers model")
    p.add_argument("run")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="peft: adapter_config.json + adapter_model.safetensors for PeftModel.from_pretrained "
                        "(lora, ia3); merged: adapters folded into the base, a plain transformers folder "
                        "(lora, ia3, full, freeze, bitfit)")
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-peft", help="turn a peft LoRA/DoRA/IA3 adapter folder into a tunelab run")
    p.add_argument("peft_dir", metavar="PEFT_DIR", help="folder with adapter_config.json + adapter_model.safetensors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a data.* / train.* setting of the run (repeatable), e.g. --set data.text_column=review "
                        "--set data.label_names=[neg,pos] (label names in id order)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--model", help="base model (default: the adapter's base_model_name_or_path)")
    p.add_argument("--data", help="the run's data source, so 'tunelab eval RUN' needs no --data")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_import_peft)

    p = sub.add_parser("methods", help="list methods with their options and defaults")
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        _quiet_libraries()
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        if debug:
            raise
        print(f"tunelab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingDiverged as e:
        if debug:
            raise
        print(f"tunelab: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("tunelab: interrupted; resume with --resume RUN", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry: re-exec on tcmalloc for training (see tunelab.allocator), then run."""
    from tunelab.allocator import reexec_with_allocator

    if sys.argv[1:2] == ["train"]:
        reexec_with_allocator(sys.argv[1:])
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
