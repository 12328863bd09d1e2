"""Folders for export and import: the finished run that is read, and the output written safely.

The output is written into a hidden sibling folder first and swapped in when complete, so a failure
half-way (a bad tensor, a full disk) never leaves a half-written or damaged ``OUT``. An existing
non-empty ``OUT`` is refused unless the caller passes ``overwrite``; even then it is replaced only
once the new folder is complete. Folders that hold the inputs (the run, the adapter, the base
model) are never a valid ``OUT``, so ``--overwrite`` cannot delete what is being read.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.errors import UserError
from tunelab.run import RunDir


def open_finished_run(path: str | Path) -> RunDir:
    """A run directory whose training finished (``results.json`` and the trained weights exist)."""
    run = RunDir.open(path)
    if not run.finished:
        raise UserError(f"run {run.path} has not finished (no results.json); finish it with "
                        f"'tunelab train --resume {run.path}' before exporting")
    if not run.weights.is_file():
        raise UserError(f"run {run.path} has no trained weights ({run.weights}); it cannot be exported")
    return run


def input_folders(run: RunDir, cfg: RunConfig) -> list[Path]:
    """Folders an export reads: the run, and the base model when it is a local folder."""
    from tunelab.inference import is_run_dir
    from tunelab.models.loading import resolve_model

    base = cfg.model.name_or_path
    resolved = Path(base) if is_run_dir(base) else Path(resolve_model(base))  # a run started from a run
    return [run.path, *([resolved] if resolved.is_dir() else [])]


def check_out_dir(out: str | Path, *, overwrite: bool, protect: Iterable[str | Path] = ()) -> Path:
    """Validate ``out`` before any work: not a file, not an input folder, empty unless ``overwrite``."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is a file; give a folder path")
    target = path.resolve()
    for item in protect:
        guarded = Path(item).expanduser().resolve()
        if target == guarded or target in guarded.parents:
            raise UserError(f"--out {path} would replace {guarded}, which this command reads; "
                            "choose another folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"--out {path} already exists and is not empty; pass --overwrite to replace it "
                        "or choose another folder")
    return path


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``out``; on success it replaces ``out``, on error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out)


def _swap_in(stage: Path, out: Path) -> None:
    """Move ``stage`` to ``out``; an existing ``out`` is moved aside first and deleted last."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
