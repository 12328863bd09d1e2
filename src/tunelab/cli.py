"""The ``tunelab`` command: train, compare, eval, predict, score, embed, generate, chat, serve, export, plot,
import-peft, methods.

User mistakes print one line and exit with code 2 (``--debug`` shows the traceback). The last line
``train`` prints is the run directory; the last line ``compare`` prints is the comparison folder.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    # bitsandbytes (imported by transformers' generation utilities on some paths) logs on
    # AVX512-bf16 CPUs that an optional hub kernel is missing; tunelab never uses that path.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------- verbs

PARENT_ENV = "TUNELAB_PARENT_PID"
"""Set by ``tunelab compare`` for its training processes: they end when the comparison does."""


def die_with_parent() -> None:
    """A training process started by ``tunelab compare`` is killed with it (Linux ``PR_SET_PDEATHSIG``),
    so a comparison killed with ``kill -9`` leaves no orphan writing into its folder."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if str(os.getppid()) != parent:  # the comparison died before the call above took effect
        os._exit(137)


def cmd_train(args: argparse.Namespace) -> int:
    from tunelab import pipeline
    from tunelab.config import build_config

    die_with_parent()
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
    before = results.get("baseline") or {}
    for key in _summary_metrics(results.get("task")):
        value = results["test"].get(key)
        if isinstance(value, float):
            was = before.get(key)
            table.add_row(f"test {key}", f"{value:.4f}" + (f" (before training {was:.4f})"
                                                          if isinstance(was, float) else ""))
    p = results["params"]
    table.add_row("trainable params", f"{p['trainable']:,} / {p['total']:,} ({p['trainable_percent']:.3f}%)")
    speed = f"{results['samples_per_second']:.1f} samples/s"
    if _counts_tokens(results.get("task")):
        speed += f", {results.get('tokens_per_second', 0):.0f} tokens/s"
    table.add_row("train time", f"{results['train_seconds']:.1f} s ({speed})")
    table.add_row("peak memory", f"{results['peak_memory_mb']:.0f} MB")
    Console(stderr=False).print(table)


def _counts_tokens(task: str | None) -> bool:
    """Text generation runs report their speed in tokens as well."""
    from tunelab.tasks import TASK_SPECS

    return task in TASK_SPECS and TASK_SPECS[task].generates_text


def _summary_metrics(task: str | None) -> tuple[str, ...]:
    """The test metrics a task's summary shows (every registered task's, for an unknown task)."""
    from tunelab.tasks import TASK_SPECS

    if task in TASK_SPECS:
        return TASK_SPECS[task].summary_metrics
    return tuple(dict.fromkeys(m for spec in TASK_SPECS.values() for m in spec.summary_metrics))


def cmd_compare(args: argparse.Namespace) -> int:
    from tunelab.compare.runner import run_compare

    try:
        run_compare(args.config, overwrite=args.overwrite, only=args.only, budget=args.budget, jobs=args.jobs)
    except KeyboardInterrupt:
        print(f"\ntunelab: interrupted; run tunelab compare {args.config} again to continue (finished runs are "
              "skipped, the interrupted one resumes from its last checkpoint)", file=sys.stderr)
        return 130
    return 0


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
    from tunelab import pipeline

    if bool(args.inputs) == bool(args.file):
        raise UserError("give inputs to predict (texts, or image files for an image run), or --file in.jsonl "
                        "(with --out), not both and not neither")
    loaded = pipeline.load_run(args.run)
    rows = loaded.task.predict(loaded, list(args.inputs) or None, args.file)
    lines = [json.dumps(row, default=str) for row in rows]
    if args.out:
        Path(args.out).write_text("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} predictions to {args.out}")
    else:
        print("\n".join(lines))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Rewards of responses to prompts, from a run whose task scores responses (``scores_responses``)."""
    from tunelab import pipeline
    from tunelab.tasks import TASK_SPECS

    if bool(args.prompt or args.response) == bool(args.file):
        raise UserError("give --prompt TEXT --response TEXT (both repeatable, the same number of times) or "
                        "--file rows.jsonl, not both and not neither")
    if args.file is None and len(args.prompt or []) != len(args.response or []):
        raise UserError(f"got {len(args.prompt or [])} --prompt but {len(args.response or [])} --response; give "
                        "them the same number of times (the i-th response answers the i-th prompt)")
    if args.out and not args.file:
        raise UserError("--out goes with --file; with --prompt/--response the scores are printed")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    scorers = [name for name, spec in TASK_SPECS.items() if spec.scores_responses]
    task = pipeline.resume_config(args.run).task.name
    if not TASK_SPECS[task].scores_responses:
        raise UserError(f"run {args.run} is a task.name={task} run, which cannot score responses; runs of "
                        f"task.name={' or '.join(scorers)} can")
    loaded = pipeline.load_run(args.run)
    if not hasattr(loaded.task, "score"):
        raise UserError(f"task {task} has no score(); runs of task.name={' or '.join(scorers)} can score")
    rows = _scored_file(loaded, args.file, args.batch_size, _score_options(args)) if args.file else \
        _scored_pairs(loaded, args)
    lines = [json.dumps(row, default=str) for row in rows]
    if args.out:
        Path(args.out).write_text("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} scored rows to {args.out}")
    else:
        print("\n".join(lines))
    return 0


EMBED_FORMATS = (".npy", ".safetensors", ".jsonl")


def cmd_embed(args: argparse.Namespace) -> int:
    """Vectors of texts from a run whose task embeds text (``embeds_text``)."""
    from tunelab import pipeline
    from tunelab.tasks import TASK_SPECS

    if bool(args.texts) == bool(args.file):
        raise UserError("give texts to embed or --file rows.jsonl (with --out), not both and not neither")
    if args.out and Path(args.out).suffix not in EMBED_FORMATS:
        raise UserError(f"--out {args.out}: the file type is read from its extension; accepted: "
                        f"{', '.join(EMBED_FORMATS)}")
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise UserError(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    task = pipeline.resume_config(args.run).task.name
    if not TASK_SPECS[task].embeds_text:
        embedders = " or ".join(name for name, spec in TASK_SPECS.items() if spec.embeds_text)
        raise UserError(f"run {args.run} is a task.name={task} run, which does not embed texts; runs of "
                        f"task.name={embedders} do")
    loaded = pipeline.load_run(args.run)
    texts = _texts_to_embed(loaded, args) if args.file else list(args.texts)
    vectors = loaded.task.embed(loaded, texts, batch_size=args.batch_size)
    if not args.out:
        print("\n".join(json.dumps({"text": t, "embedding": v.tolist()}) for t, v in zip(texts, vectors)))
        return 0
    _write_vectors(Path(args.out), texts, vectors)
    print(f"wrote {len(texts)} embeddings of dimension {vectors.shape[1]} to {args.out}")
    return 0


def _texts_to_embed(loaded, args: argparse.Namespace) -> list[str]:
    from tunelab.data.readers import load_source

    ds = load_source(args.file)["train"]
    candidates = [args.column] if args.column else [loaded.cfg.data.text_column, "text", "anchor"]
    column = next((c for c in candidates if c and c in ds.column_names), None)
    if column is None:
        raise UserError(f"file {args.file} has no column {' or '.join(repr(c) for c in candidates if c)}; its "
                        f"columns: {', '.join(ds.column_names)} (choose one with --column)")
    texts = list(ds[column])
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"file {args.file} row {i + 1}, column '{column}' is empty; every row needs a text")
    return texts


def _write_vectors(out: Path, texts: list[str], vectors) -> None:
    """``.npy`` (float32 [N, d]), ``.safetensors`` (tensor ``embeddings``), ``.jsonl`` (text + embedding);
    written to a temporary file first, so a failure leaves no half-written output."""
    import os
    import tempfile

    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        if out.suffix == ".npy":
            np.save(tmp, vectors.numpy().astype(np.float32), allow_pickle=False)
        elif out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({"embeddings": vectors.contiguous()}, tmp, metadata={"count": str(len(texts))})
        else:
            Path(tmp).write_text("".join(json.dumps({"text": t, "embedding": v.tolist()}) + "\n"
                                         for t, v in zip(texts, vectors)))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _scored_pairs(loaded, args: argparse.Namespace) -> list[dict]:
    prompts = [[{"role": "user", "content": p}] for p in args.prompt]
    scores = loaded.task.score(loaded, prompts, list(args.response), batch_size=args.batch_size,
                               **_score_options(args))
    return [{"prompt": p, "response": r, "reward": s} for p, r, s in zip(args.prompt, args.response, scores)]


def _score_options(args: argparse.Namespace) -> dict:
    """A classifier's --label/--output (a reward model refuses a label)."""
    return {"label": args.label, "output": args.output}


def _scored_file(loaded, path: str, batch_size: int, options: dict) -> list[dict]:
    """Rows with ``prompt`` + ``response`` (-> ``reward``), or preference rows ``prompt``/``chosen``/
    ``rejected`` (-> ``chosen_reward``, ``rejected_reward``, ``prefers_chosen``)."""
    from tunelab.data.preferences import read_prompts
    from tunelab.data.readers import load_source

    ds = load_source(path)["train"]
    cols = set(ds.column_names)
    sides = ["response"] if "response" in cols else ["chosen", "rejected"] if {"chosen", "rejected"} <= cols else None
    if sides is None or ("prompt" not in cols and sides == ["response"]):
        raise UserError(f"file {path} needs columns 'prompt' and 'response' (one response to score per row), or "
                        f"'prompt', 'chosen' and 'rejected' (both scored); it has columns {sorted(cols)}")
    prompts = read_prompts(ds, f"file {path}")
    rows = [dict(r) for r in ds.with_format(None)]
    for side in sides:
        texts = [_response_text(r[side], f"file {path} row {i + 1}, column '{side}'") for i, r in enumerate(rows)]
        key = "reward" if side == "response" else f"{side}_reward"
        for row, value in zip(rows, loaded.task.score(loaded, prompts, texts, batch_size=batch_size, **options)):
            row[key] = value
    if sides != ["response"]:
        for row in rows:
            row["prefers_chosen"] = row["chosen_reward"] > row["rejected_reward"]
    return rows


def _response_text(value, where: str) -> str:
    """A response cell: a non-empty string, or a list of turns whose last is the assistant's."""
    accepted = "accepted: a non-empty string, or a list of turns ending with the assistant's turn"
    if isinstance(value, list):
        last = value[-1] if value and isinstance(value[-1], dict) else {}
        if (last.get("role") or last.get("from")) not in ("assistant", "gpt"):
            raise UserError(f"{where} is a list of turns that does not end with the assistant's turn; {accepted}")
        value = last.get("content", last.get("value"))
    if not isinstance(value, str) or not value.strip():
        shown = "empty" if value is None or isinstance(value, str) else f"a {type(value).__name__}"
        raise UserError(f"{where} is {shown}; {accepted}")
    return value


def _generation_options(args: argparse.Namespace):
    from pydantic import ValidationError

    from tunelab.generation import GenerationOptions

    try:
        return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, top_k=args.top_k, stop=args.stop or [],
                                 batch_size=args.batch_size, seed=args.seed)
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} "
                        f"(got {first.get('input')!r})") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from tunelab.data.readers import load_source
    from tunelab.generation import generate_texts
    from tunelab.inference import load_generator, row_messages

    if bool(args.prompt) == bool(args.file):
        raise UserError("give --prompt TEXT (repeatable) or --file prompts.jsonl, not both and not neither")
    if args.out and not args.file:
        raise UserError("--out goes with --file; with --prompt the generations are printed")
    opts = _generation_options(args)
    if args.file:
        rows = [dict(r) for r in load_source(args.file)["train"]]
        messages = [row_messages(r, f"{args.file} row {i}") for i, r in enumerate(rows)]
    else:
        rows = [{"prompt": p} for p in args.prompt]
        messages = [[{"role": "user", "content": p}] for p in args.prompt]
    gen = load_generator(args.model, template=args.template, system_prompt=args.system)
    prompts = list(args.prompt) if args.raw and args.prompt else [gen.render(m) for m in messages]
    outputs = generate_texts(gen.model, gen.tokenizer, prompts, opts)
    lines = [json.dumps({**row, "generation": out}) for row, out in zip(rows, outputs)]
    if args.out:
        Path(args.out).write_text("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines)} generations to {args.out}")
    elif args.file:
        print("\n".join(lines))
    else:
        print("\n\n".join(outputs))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from tunelab.generation import ChatSession, chat_loop
    from tunelab.inference import load_generator

    opts = _generation_options(args)
    gen = load_generator(args.model, template=args.template, system_prompt=args.system)
    session = ChatSession(gen.model, gen.tokenizer, gen.render, system_prompt=gen.system_prompt, opts=opts)
    print(f"chatting with {gen.source} (/reset clears the history, /exit or Ctrl-D quits)")
    chat_loop(session, opts)
    return 0


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_MODEL",
                   help="an instruction-tuning run directory, or a causal LM (smollm2-135m, a folder, a hub id)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0 = off)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (default 0 = off)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable); cut from the output")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default 8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--system", help="system prompt (default: the run's task.system_prompt)")
    p.add_argument("--template", help="auto, chat, alpaca or a template string with {prompt} (default: the run's)")


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from tunelab.serve import serve
    from tunelab.serve.schemas import ServeLimits

    limits = {name: getattr(args, name) for name in ServeLimits.model_fields if getattr(args, name, None) is not None}
    if args.max_body_mb is not None:
        limits["max_body_bytes"] = int(args.max_body_mb * 1024 * 1024)
    try:
        ServeLimits(**limits)
    except ValueError as e:
        first = e.errors()[0] if hasattr(e, "errors") else {"loc": ("?",), "msg": str(e)}  # type: ignore[attr-defined]
        raise UserError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    api_key = args.api_key or os.environ.get("TUNELAB_API_KEY") or None
    serve(args.runs, base=args.base, host=args.host, port=args.port, api_key=api_key, limits=limits,
          log=lambda line: print(line, flush=True))
    return 0


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    from tunelab.serve.schemas import ServeLimits

    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories to serve (ALIAS=RUN names one); the "
                                                           "request's 'model' is the run's folder name or alias")
    p.add_argument("--base", metavar="MODEL", help="also serve this causal LM as it is (e.g. smollm2-135m); runs "
                                                  "trained on it share its copy")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNELAB_API_KEY, else none)")
    fields = ServeLimits.model_fields
    for name in ("max_tokens", "max_prompt_tokens", "max_n", "max_inputs", "max_queue", "max_batch_size",
                 "batch_wait_ms"):
        kind = float if name == "batch_wait_ms" else int
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help=f"{fields[name].description} (default {fields[name].default})")
    p.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MiB (default 8)")


def cmd_export(args: argparse.Namespace) -> int:
    from tunelab.interop import export_run

    out = export_run(args.run, args.format, args.out, overwrite=args.overwrite)
    print(f"exported {args.run} as {args.format} to:")
    print(out)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from tunelab.plotting import plot_run

    print(plot_run(args.run, args.out))
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

    p = sub.add_parser("compare", help="train several methods on the same model, data and budget, then compare "
                                       "them (table, plots, HTML report, recommendation)")
    p.add_argument("config", metavar="COMPARE.yaml",
                   help="compare file: base (shared run config), runs (methods and variants), budget, metric "
                        "(see examples/compare-sentiment.yaml)")
    p.add_argument("--overwrite", action="store_true", help="redo runs that already finished or started")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="run (or with --overwrite redo) only these runs; "
                                                             "the report still includes the others that finished")
    p.add_argument("--budget", choices=("params", "memory", "time", "artifact", "latency"),
                   help="rank and recommend by this cost (default: the file's budget, else params)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once, one device each (CUDA devices; on a CPU-only machine the runs "
                        "share the cores; default 1)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("eval", help="evaluate a trained run on its test split or another labelled file")
    p.add_argument("run")
    p.add_argument("--data", help="labelled file or folder (default: the run's own test split)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict labels for texts (or image files) or the rows of a file")
    p.add_argument("run")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="texts, or image files for an image run")
    p.add_argument("--file", help="input .jsonl/.csv/... with the run's text (or image path) column")
    p.add_argument("--out", help="write predictions as JSON lines here")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="score responses to prompts with a reward-model or classification run")
    p.add_argument("run")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="a user message (repeatable, with --response)")
    p.add_argument("--response", action="append", metavar="TEXT",
                   help="the response to the --prompt in the same position (repeatable)")
    p.add_argument("--file", help="rows as .jsonl/.csv/...: prompt + response, or prompt + chosen + rejected")
    p.add_argument("--out", help="write the rows with their rewards as JSON lines here")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (default 32)")
    p.add_argument("--label", help="classification run: the label whose probability is the score (default: the "
                                   "second of two labels)")
    p.add_argument("--output", choices=("probability", "logit"), default="probability",
                   help="classification run: report the label's probability (default) or its logit")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("embed", help="embed texts with a contrastive run (vectors to stdout or a file)")
    p.add_argument("run")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("--file", help="rows as .jsonl/.csv/... with a text column (see --column)")
    p.add_argument("--column", help="the --file column to embed (default: data.text_column, else text, else anchor)")
    p.add_argument("--out", help="write the vectors here: .npy (float32 [N, d]), .safetensors (tensor "
                                 "'embeddings') or .jsonl (text + embedding); default: JSON lines on stdout")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("generate", help="generate answers with an instruction-tuned run or a causal LM")
    _add_generation_options(p)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="a user message (repeatable)")
    p.add_argument("--file", help="prompts as .jsonl/.csv/...: prompt, instruction [+ input], or messages")
    p.add_argument("--out", help="write the rows with a 'generation' field as JSON lines here")
    p.add_argument("--raw", action="store_true", help="send --prompt text as it is, without the chat template")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive terminal chat (streams tokens, keeps the history)")
    _add_generation_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve runs behind an OpenAI-compatible API with a playground page "
                                     "(adapters over one base share it)")
    _add_serve_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a run as a peft adapter, a merged transformers model or a "
                                      "sentence-transformers folder")
    p.add_argument("run")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="peft: adapter_config.json + adapter_model.safetensors for PeftModel.from_pretrained "
                        "(lora, ia3, prompt_tuning, prefix_tuning, ptuning_v2); merged: adapters folded into the "
                        "base, a plain transformers folder "
                        "(lora, ia3, full, freeze, bitfit); sentence-transformers: a contrastive run as a "
                        "folder SentenceTransformer(path) loads (the merged methods)")
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="draw a run's loss, learning-rate and metric curves (metrics.jsonl) to a PNG")
    p.add_argument("run")
    p.add_argument("--out", help="PNG file to write (default: RUN/plots/curves.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("import-peft",
                       help="turn a peft LoRA/DoRA/IA3/prompt/prefix tuning adapter folder into a tunelab run")
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
