#!/usr/bin/env python
"""Load test of ``tunelab serve`` on this CPU: 64 concurrent chat requests, two SmolLM2 LoRA adapters
over one base, loopback only, bounded in count and time.

1. Trains two short LoRA runs on the built-in smollm2-135m (wordnet_instruct, different seeds) unless
   they exist under ``--work``.
2. Starts ``tunelab serve`` as a child process three ways, each serving the same 64 requests (half
   for each adapter, greedy, ``max_tokens`` tokens each, all sent at once through the openai client's
   async API):
   * ``batched``     -- ``--max-batch-size 16``: dynamic batching, both adapters in one batch;
   * ``one_at_time`` -- ``--max-batch-size 1``: the same requests served one at a time;
   in the order batched, one-at-a-time, one-at-a-time, batched (ABBA), reporting the median of the
   two rounds of each.
3. Memory: the server's peak RSS (``VmHWM``) after loading and answering 8 warm-up requests, with
   two adapters and with one.

Targets: 0 errors; batched throughput (completion tokens/s) >= 2x one-at-a-time; server memory
with 2 adapters <= 1.1x with 1. Writes benchmarks/results/serve_load.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc

HERE = Path(__file__).resolve().parent
TARGETS = {"errors": 0, "batched_throughput_ratio_min": 2.0, "memory_two_vs_one_adapter_max": 1.1}
QUESTIONS = ["Define the word '{w}'.", "Use the word '{w}' in a sentence.", "What is a synonym of '{w}'?"]
WORDS = ["river", "stone", "bright", "quickly", "bank", "light", "cold", "garden", "music", "paper", "run",
         "salt", "glass", "storm", "thin", "open"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/tunelab-serve-load"), help="runs and logs live here")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=12)
    p.add_argument("--timeout", type=float, default=900.0, help="most seconds one load round may take")
    p.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    return p.parse_args()


def train_adapters(work: Path, steps: int, env: dict[str, str]) -> dict[str, Path]:
    runs = {}
    for name, seed in (("words-a", 1), ("words-b", 2)):
        run = work / "runs" / name
        if not (run / "results.json").is_file():
            cmd = [*bc.tunelab_command(), "train", "task.name=sft", "model.name_or_path=smollm2-135m",
                   "data.source=wordnet_instruct", "method.name=lora", f"train.max_steps={steps}",
                   "train.batch_size=8", "data.max_length=96", "data.max_train_samples=400",
                   "task.eval_generate=0", "train.eval_strategy=no", "data.max_eval_samples=16", f"seed={seed}",
                   "train.lr=5e-4", f"name={name}", f"output_dir={work / 'runs'}", "--overwrite"]
            print(f"training {name} ({steps} steps) ...", flush=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"training {name} failed:\n{done.stderr[-3000:]}")
        runs[name] = run
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tunelab serve`` in a child process on a free loopback port."""

    def __init__(self, runs: list[Path], batch_size: int, max_tokens: int, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [*bc.tunelab_command(), "serve", *map(str, runs), "--port", str(self.port), "--max-batch-size",
               str(batch_size), "--batch-wait-ms", "20", "--max-queue", "256", "--max-tokens", str(max_tokens)]
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start; see {log}")
                time.sleep(0.5)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def requests(n: int, models: list[str]) -> list[tuple[str, str]]:
    return [(models[i % len(models)], QUESTIONS[i % len(QUESTIONS)].format(w=WORDS[i % len(WORDS)])) for i in range(n)]


async def load(url: str, asks: list[tuple[str, str]], max_tokens: int, timeout: float) -> dict[str, Any]:
    """Send every request at once; per-request latency, tokens and errors."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)

    async def one(model: str, text: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            reply = await client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens,
                                                         messages=[{"role": "user", "content": text}])
            return {"seconds": time.perf_counter() - t0, "tokens": reply.usage.completion_tokens, "error": None}
        except Exception as exc:  # noqa: BLE001 -- counted as an error of the load test
            return {"seconds": time.perf_counter() - t0, "tokens": 0, "error": f"{type(exc).__name__}: {exc}"[:300]}

    t0 = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(one(m, t) for m, t in asks)), timeout)
    wall = time.perf_counter() - t0
    await client.close()
    latencies = sorted(r["seconds"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "errors": sum(r["error"] is not None for r in results),
            "first_errors": [r["error"] for r in results if r["error"]][:3], "wall_seconds": round(wall, 2),
            "completion_tokens": tokens, "tokens_per_second": round(tokens / wall, 2),
            "requests_per_second": round(len(results) / wall, 3),
            "latency_p50_s": round(latencies[len(latencies) // 2], 3),
            "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)}


def metric_lines(url: str, prefix: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix)}


def round_of(kind: str, runs: dict[str, Path], args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    batch = args.batch_size if kind == "batched" else 1
    server = Server(list(runs.values()), batch, args.max_tokens, args.work / f"server-{kind}.log", env)
    try:
        asyncio.run(load(server.url, requests(4, list(runs)), args.max_tokens, args.timeout))  # warm-up
        out = asyncio.run(load(server.url, requests(args.requests, list(runs)), args.max_tokens, args.timeout))
        out["batches"] = metric_lines(server.url, "tunelab_batches_total")
        out["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
    finally:
        server.stop()
    print(f"  {kind}: {out['tokens_per_second']} tokens/s, p50 {out['latency_p50_s']} s, "
          f"p95 {out['latency_p95_s']} s, errors {out['errors']}", flush=True)
    return out


def memory(runs: list[Path], args: argparse.Namespace, env: dict[str, str]) -> float:
    server = Server(runs, args.batch_size, args.max_tokens, args.work / f"server-mem-{len(runs)}.log", env)
    try:
        names = [r.name for r in runs]
        asyncio.run(load(server.url, requests(8, names), args.max_tokens, args.timeout))
        return round(server.peak_rss_mb(), 1)
    finally:
        server.stop()


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = bc.child_env()
    runs = train_adapters(args.work, args.train_steps, env)
    rounds: dict[str, list[dict[str, Any]]] = {"batched": [], "one_at_a_time": []}
    for kind in ("batched", "one_at_a_time", "one_at_a_time", "batched"):
        print(f"round {len(rounds['batched']) + len(rounds['one_at_a_time']) + 1}: {kind} ...", flush=True)
        rounds[kind].append(round_of(kind, runs, args, env))
    mem_two = memory(list(runs.values()), args, env)
    mem_one = memory([runs["words-a"]], args, env)
    med = {k: statistics.median(r["tokens_per_second"] for r in v) for k, v in rounds.items()}
    errors = sum(r["errors"] for v in rounds.values() for r in v)
    ratio = med["batched"] / med["one_at_a_time"]
    result = {
        "benchmark": "serve_load", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": bc.machine_info(),
        "setup": {"model": "smollm2-135m", "adapters": list(runs), "method": "lora", "requests": args.requests,
                  "max_tokens": args.max_tokens, "temperature": 0, "batched_max_batch_size": args.batch_size,
                  "batch_wait_ms": 20, "client": "openai.AsyncOpenAI, every request sent at once, loopback",
                  "order": "batched, one-at-a-time, one-at-a-time, batched (medians of the two of each)"},
        "rounds": rounds,
        "summary": {"errors": errors, "batched_tokens_per_second": med["batched"],
                    "one_at_a_time_tokens_per_second": med["one_at_a_time"],
                    "batched_throughput_ratio": round(ratio, 3),
                    "batched_latency_p50_s": statistics.median(r["latency_p50_s"] for r in rounds["batched"]),
                    "batched_latency_p95_s": statistics.median(r["latency_p95_s"] for r in rounds["batched"]),
                    "server_peak_rss_mb_two_adapters": mem_two, "server_peak_rss_mb_one_adapter": mem_one,
                    "memory_two_vs_one_adapter": round(mem_two / mem_one, 3)},
        "targets": TARGETS,
    }
    s = result["summary"]
    result["passed"] = {"errors": errors == 0, "throughput": ratio >= TARGETS["batched_throughput_ratio_min"],
                        "memory": s["memory_two_vs_one_adapter"] <= TARGETS["memory_two_vs_one_adapter_max"]}
    bc.write_json(args.out, result)
    print(json.dumps(s, indent=2))
    print(f"wrote {args.out}")
    sys.exit(0 if all(result["passed"].values()) else 1)


if __name__ == "__main__":
    main()
