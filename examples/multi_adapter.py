"""Several adapters on one base model: switch, disable, blend, merge, save and load.

    python examples/multi_adapter.py                  # trains two quick LoRA runs (MiniLM, Rotten Tomatoes)
    python examples/multi_adapter.py RUN_DIR RUN_DIR  # or use finished runs trained on the same base

The quick runs (512 training rows, one epoch each; demo quality, not a benchmark) take one to three
minutes each on two CPU cores and are kept under runs/multi-adapter/, so a second call starts at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tunelab.adapters import AdapterSet
from tunelab.cli import main as tunelab
from tunelab.errors import UserError

TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "it was fine, i guess"]
QUICK_RUNS = {  # two LoRA variants of the same base, so they can also be blended
    "lora-qv": ["method.r=8", "method.target_modules=[query,value]", "train.lr=5e-3"],
    "lora-all": ["method.r=8", "method.use_rslora=true", "train.lr=2e-3", "seed=7"],
}


def quick_runs(root: Path) -> list[Path]:
    """Train the two small runs unless they are already there."""
    for name, extra in QUICK_RUNS.items():
        if not (root / name / "results.json").is_file():
            code = tunelab(["train", f"name={name}", f"output_dir={root}", "model.name_or_path=minilm",
                            "data.source=rotten_tomatoes", "data.max_train_samples=512", "data.max_length=64",
                            "train.epochs=1", *extra])
            if code:
                raise SystemExit(code)
    return [root / name for name in QUICK_RUNS]


def show(adapters: AdapterSet, title: str) -> None:
    """One line per text: the active adapter's label and score."""
    preds = adapters.predict(TEXTS)
    print(f"{title:>22}: " + " | ".join(f"{p['label']} {p['score']:.2f}" for p in preds))


def main(argv: list[str]) -> None:
    runs = [Path(p) for p in argv] or quick_runs(Path("runs/multi-adapter"))
    adapters = AdapterSet.from_runs(runs)  # the base is built once; the first run is active
    print(adapters)
    for name in adapters.names:
        with adapters.active(name):
            show(adapters, name)

    # The model is a plain nn.Module: call it directly; disable() gives the untouched base.
    batch = adapters.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad(), adapters.disable():
        print(f"{'base (untrained head)':>22}: logits {adapters.model(**batch).logits[0].tolist()}")

    try:  # an exact blend of LoRA updates (rank = sum of ranks); the head is the first one's
        first, second = adapters.names[:2]
        adapters.add_weighted("blend", {first: 0.5, second: 0.5})
        with adapters.active("blend"):
            show(adapters, "blend 0.5/0.5")
    except (UserError, ValueError) as err:
        print(f"no blend: {err}")

    try:  # folded into the base weights: no extra cost per token; unmerge restores them bit for bit
        adapters.merge(adapters.names[0])
        show(adapters, f"{adapters.names[0]} merged")
        adapters.unmerge()
    except UserError as err:
        print(f"no merge: {err}")

    saved = adapters.save("runs/multi-adapter/set", overwrite=True)
    again = AdapterSet.load(saved)  # rebuilds the base; every name and the active one come back
    print(f"reloaded {again.names}, active {again.active_name!r}")
    show(again, f"{again.active_name} (reloaded)")


if __name__ == "__main__":
    main(sys.argv[1:])
