"""Several named adapters on one base model: add, switch, disable, combine, merge, save, load.

An :class:`AdapterSet` holds one *bare* base model and any number of named adapters trained for it.
Exactly one adapter (or none: the untouched base) is installed in the model at a time, so the
model is an ordinary ``nn.Module`` that you call as usual; switching is a matter of swapping a few
modules, not of reloading the base. Usage::

    from tunelab.adapters import AdapterSet

    adapters = AdapterSet.from_runs(["runs/sst", "runs/imdb"])  # base built once; names = folder names
    model = adapters.model                                      # "sst" is active (the first run)
    with adapters.active("imdb"):                               # switch for a block, then switch back
        logits = model(**batch).logits
    with adapters.disable():                                    # the untouched base model
        base_logits = model(**batch).logits
    adapters.add_weighted("mix", {"sst": 0.7, "imdb": 0.3})     # LoRA only; exact, rank r_sst + r_imdb
    adapters.merge("mix")                                       # fold into the base weights (fast inference)
    adapters.unmerge()                                          # base weights back, bit for bit
    adapters.save("adapters/mine")                              # one safetensors per adapter + adapters.json
    again = AdapterSet.load("adapters/mine")                    # same names, same active adapter

Other entry points: ``add(name, [LoRAConfig(...)])`` (fresh adapter from method configs, optional
``weights=``), ``add(name, from_run=RUN_DIR)``, ``set_active(name)`` / ``set_active(None)``,
``delete(name)``, ``predict(texts)`` (label, score, probabilities, like ``tunelab predict``).

**What an adapter is** (:mod:`tunelab.adapters.capture`). The methods of a run are applied to the
bare base; the wrapper modules that appear (LoRA, IA3, bottleneck adapters: each holds the base
layer it wraps as ``base_layer``) are collected by module name, together with the forward hooks
they registered on base modules (parallel adapters read the sublayer input that way), and the base
is put back as it was. Base tensors a run trained in place -- the task head, LayerNorms of serial
adapters, BitFit's biases -- become per-adapter copies, swapped in as parameter objects when the
adapter is installed, so the base's own tensors are never written. Supported methods: those whose
spec is :attr:`~tunelab.methods.base.MethodSpec.swappable` (:data:`SUPPORTED_METHODS`: ``lora``
with DoRA and rsLoRA, ``ia3``, ``adapter``, ``parallel_adapter`` and ``bitfit``), alone or composed.
``full`` and ``freeze`` retrain whole base layers, ``qlora`` quantises the base, and the
virtual-token methods (``prompt_tuning``, ``prefix_tuning``, ``ptuning_v2``) rewrite the backbone's
inputs: keep such runs as separate models (``tunelab.pipeline.load_run``). Adapter tensors are
frozen: a set is for inference.

**Heads** (:mod:`tunelab.adapters.labels`). Each adapter carries the head it trained and its label
map; activating it swaps both in (``config.id2label`` / ``label2id`` / ``num_labels`` follow), so
adapters with different label sets can share a base. ``disable()`` shows the base with its own
(untrained) head. A weighted combination takes the head of one component -- the first listed, or
``head="name"`` -- and never averages heads: heads trained on different trunks do not live in one
space, and label sets may differ.

**Weighted combination** (``add_weighted``, :mod:`tunelab.adapters.blend`): plain LoRA adapters
only (no DoRA, no IA3 or bottleneck adapters, no BitFit). The update of each module is
``sum_i w_i s_i B_i A_i`` (``s_i`` the scaling), realised exactly as one LoRA of rank ``sum_i r_i``
with scaling 1 by stacking the rows ``w_i s_i A_i`` and the columns ``B_i`` (the "cat" combination
of peft's ``add_weighted_adapter``). Weights may be negative (subtracting a task vector).

**Merging** (:mod:`tunelab.adapters.blend`). ``merge(name)`` activates ``name`` and folds its
wrappers into the base weights (LoRA, DoRA, IA3; bottleneck adapters have no merged form). By
default a host-memory copy of the weights it changes is kept so ``unmerge()`` restores them bit for
bit; ``merge(exact=False)`` skips the copy and undoes the update arithmetically (exact up to
rounding). Switching, disabling, deleting or adding unmerges first, so the base is never left
modified under another adapter.

**Saving** (:mod:`tunelab.adapters.storage`). ``save(dir)`` writes ``adapters.json`` (format
version, base model and fingerprint, task, active name, and per adapter its method configs, label
map, run config and origin) plus one ``<name>.safetensors`` per adapter holding the same tensor
names a run's ``weights.safetensors`` has, the base head, and the tokenizer when known.
``load(dir)`` rebuilds the base from the manifest (or takes ``model=``, which must have the same
fingerprint) and restores every adapter by name.

Layout: :mod:`~tunelab.adapters.capture` (one adapter: what its methods injected),
:mod:`~tunelab.adapters.adapter_set` (the set: add, switch, disable, delete, predict),
:mod:`~tunelab.adapters.blend` (weighted LoRA, merge/unmerge), :mod:`~tunelab.adapters.storage`
(manifest, files, rebuilding the base), :mod:`~tunelab.adapters.labels` (heads' label maps).
"""

from __future__ import annotations

from tunelab.adapters.adapter_set import AdapterSet
from tunelab.adapters.capture import Adapter, HookSpec, swappable_methods
from tunelab.adapters.storage import BASE_HEAD, FORMAT, FORMAT_VERSION, MANIFEST, TOKENIZER_DIR

SUPPORTED_METHODS: tuple[str, ...] = swappable_methods()
"""Methods whose result can be swapped in and out of a shared base (:attr:`MethodSpec.swappable`),
those that add modules first. The checks read this tuple when they run
(:func:`tunelab.adapters.capture.supported`), so it is the one place that decides."""

__all__ = [
    "BASE_HEAD", "FORMAT", "FORMAT_VERSION", "MANIFEST", "SUPPORTED_METHODS", "TOKENIZER_DIR",
    "Adapter", "AdapterSet", "HookSpec",
]
