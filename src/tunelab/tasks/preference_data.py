"""Reading preference data for the pairwise tasks (reward models, the DPO family).

Splits come from ``data.source`` (a file, folder or the built-in ``rt_preferences``) like every
task's, then :func:`tunelab.data.preferences.read_pairs` turns rows into
:class:`~tunelab.data.preferences.PreferencePair`; identical pairs are skipped and counted (on
stderr), every other bad row is refused in one line naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tunelab.data.builtin import BUILTIN_DATASETS
from tunelab.data.preferences import PreferencePair, read_pairs
from tunelab.errors import UserError


def load_pair_splits(cfg: Any, task_name: str) -> tuple[dict[str, list[PreferencePair]], dict[str, int]]:
    """Every split of ``data.source`` as preference pairs (validation/test carved from train when
    the source has none, as for the other tasks), and how many identical pairs each split skipped."""
    d = cfg.data
    builtin = BUILTIN_DATASETS.get(d.source)
    if builtin is not None and builtin.task != "preference":
        raise UserError(f"built-in dataset '{d.source}' is made for task.name={builtin.task}, not {task_name}; "
                        "preference tasks read prompt/chosen/rejected rows (built-in: rt_preferences)")
    splits = limited_splits(cfg, read_pairs)
    pairs, skipped = {}, {}
    for name, ds in splits.items():
        pairs[name], skipped[name] = read_pairs(ds, name)
    if any(skipped.values()):
        counts = ", ".join(f"{n} {split}" for split, n in skipped.items() if n)
        print(f"tunelab: skipped {counts} pair(s) whose chosen and rejected responses are identical "
              "(no preference to learn)", file=sys.stderr)
    return pairs, skipped


def limited_splits(cfg: Any, check: Callable[..., Any]) -> dict[str, Any]:
    """``data.source``'s splits (validation/test carved from train when absent), cut to
    ``data.max_train_samples`` / ``max_eval_samples``; ``check(dataset, split, where=file)`` reads
    every row first, so a bad row is named by its file and place in it, before any splitting."""
    from tunelab.data.readers import load_source
    from tunelab.data.splits import make_splits

    d = cfg.data
    splits = load_source(d.source, validation_file=d.validation_file, test_file=d.test_file, encoding=d.encoding)
    for name, ds in splits.items():
        origin = splits.origins.get(name)
        check(ds, name, where=origin.what if origin else None)
    splits = make_splits(splits, validation_ratio=d.validation_ratio, test_ratio=d.test_ratio, seed=d.split_seed)
    if d.max_train_samples:
        splits["train"] = splits["train"].select(range(min(d.max_train_samples, len(splits["train"]))))
    if d.max_eval_samples:
        for name in ("validation", "test"):
            if name in splits:
                splits[name] = splits[name].select(range(min(d.max_eval_samples, len(splits[name]))))
    return splits
