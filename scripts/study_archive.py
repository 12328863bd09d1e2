"""Keep the committed method study's finished runs in git, without their weights.

    python scripts/study_archive.py save      # runs/compare-study/runs/* -> docs/compare-study/runs/*
    python scripts/study_archive.py restore   # the reverse: `tunelab compare examples/compare-study.yaml`
                                              # then skips every archived run and trains the rest

A finished run is what ``tunelab compare`` reads to report it: ``results.json``, ``config.yaml`` and
``test_rows.json`` (per-row test scores, for the paired tests), plus ``metrics.jsonl`` (its curves).
The weights are not kept, so a restored run has no artifact size; the study ranks by trainable
parameters, which ``results.json`` holds.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIVE = ROOT / "runs" / "compare-study" / "runs"
ARCHIVE = ROOT / "docs" / "compare-study" / "runs"
KEPT = ("results.json", "config.yaml", "test_rows.json", "metrics.jsonl")


def copy_finished(source: Path, target: Path) -> int:
    """Copy the kept files of every finished run (one with ``results.json``) not yet in ``target``."""
    copied = 0
    for run in sorted(p for p in source.glob("*") if (p / "results.json").is_file()):
        if (target / run.name / "results.json").is_file():
            continue
        (target / run.name).mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (run / name).is_file():
                shutil.copy2(run / name, target / run.name / name)
        copied += 1
    return copied


def main(argv: list[str]) -> int:
    if argv not in (["save"], ["restore"]):
        print(__doc__.strip().splitlines()[0] + "\nusage: study_archive.py save|restore", file=sys.stderr)
        return 2
    source, target = (LIVE, ARCHIVE) if argv == ["save"] else (ARCHIVE, LIVE)
    print(f"{copy_finished(source, target)} finished runs copied from {source} to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
