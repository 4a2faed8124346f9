"""Named run sizes: how many sentences, pairs, lists and items each notebook samples.

``"full"`` (the default) is each notebook's parameters cell: the sizes closest to the papers that a
2-core CPU runs for MiniLM in minutes. ``"laptop"`` caps them (:data:`LAPTOP`) to about a quarter of
the full run's work, for a bert-base-sized model (12 layers x 768) on a CPU (README "Speed and
memory" has the measured times); the figures and tables are the same, on fewer items, so their
numbers are noisier. Every report lists each size that is below its full default
(:func:`sampled_note`, in the header's deviations).

A notebook applies its size after its parameters cell::

    n_train, n_test = sizes.cap("04_syntax_probes", size, n_train=n_train, n_test=n_test)

A size caps, it never raises: ``size="laptop"`` with ``n_train=5000`` gives the laptop's cap, and a
smaller value stays. ``None`` (or 0) means "all items" and is capped like any other value.
"""
from __future__ import annotations

SIZES = ("full", "laptop")

#: Forward cost per token of the embedded MiniLM-L6 (6 layers, 384 wide) as layers x width^2: the
#: model the full defaults were chosen for. bert-base (12 x 768) costs 8 times as much.
MINILM_COST = 6 * 384 ** 2
#: From this many times MiniLM's cost on at most :data:`FEW_CORES` CPU cores, ``bertology run`` at
#: the full size suggests ``--size laptop`` (:func:`cpu_advice`).
ADVICE_FACTOR = 4
FEW_CORES = 8

#: notebook -> parameter -> (full default, laptop cap). The full defaults are the notebooks'
#: parameters cells (``tests/test_sizes.py`` checks they agree); None means all items.
LAPTOP: dict[str, dict[str, tuple[int | None, int]]] = {
    "01_attention_patterns": {"n_pairs": (1000, 300), "n_gradient_pairs": (200, 50)},
    "02_attention_heads_syntax": {"n_sentences": (None, 500), "probe_train_sentences": (4000, 1000),
                                  "probe_test_sentences": (None, 500)},
    "03_head_clustering": {"n_sentences": (1000, 300)},
    "04_syntax_probes": {"n_train": (2000, 500), "n_dev": (400, 100), "n_test": (1000, 300),
                         "n_perturb": (400, 100), "n_agreement": (2000, 500), "n_blimp": (30, 8),
                         "n_blimp_control": (10, 3)},
    "05_semantic_roles": {},
    "06_numeracy": {"n_train_lists": (5000, 1000), "n_test_lists": (1000, 300)},
    "07_world_knowledge": {"facts_per_relation": (30, 10)},
    "08_pruning": {"n_sentences": (128, 32), "n_importance": (128, 32), "n_train": (2000, 500)},
}


def check(size) -> str:
    """``size`` if it is one of :data:`SIZES`, else a ValueError naming the choices."""
    if size not in SIZES:
        raise ValueError(f"parameter 'size' must be one of {', '.join(map(repr, SIZES))}, got {size!r}")
    return size


def _all(value) -> bool:
    return value is None or value == 0


def cap(notebook: str, size: str, **values):
    """The ``values`` (keyword order) capped by ``size`` for ``notebook`` (a key of :data:`LAPTOP`,
    else KeyError): a tuple, or the one value when one was given. Names without a cap, and every
    value under ``"full"``, come back as given."""
    if notebook not in LAPTOP:  # a misspelt name would leave the laptop size silently uncapped
        raise KeyError(f"no sizes for notebook {notebook!r}; known: {', '.join(LAPTOP)}")
    caps = LAPTOP[notebook] if check(size) == "laptop" else {}
    out = []
    for name, value in values.items():
        limit = caps.get(name, (None, None))[1]
        if limit is not None and (_all(value) or value > limit):
            value = limit
        out.append(value)
    return out[0] if len(out) == 1 else tuple(out)


def sampled(notebook: str, values: dict) -> list[str]:
    """``"name value (full: default)"`` for each of ``notebook``'s sizes in ``values`` that is below
    its full default (a number where the default is all items counts as below)."""
    out = []
    for name, (full, _) in LAPTOP.get(notebook, {}).items():
        if name not in values or _all(values[name]):
            continue
        value = values[name]
        if _all(full) or value < full:
            out.append(f"{name} {value:,} (full: {'all' if _all(full) else f'{full:,}'})")
    return out


def sampled_note(notebook: str, size: str, values: dict) -> str | None:
    """The report header's line on sampling, or None when every size is at its full default."""
    below = sampled(notebook, values)
    if not below:
        return None
    why = ("size 'laptop': samples capped to about a quarter of the full run's work, for CPU time"
           if size == "laptop" else "sizes set below the full defaults")
    return (f"Smaller samples than the full run ({why}): {'; '.join(below)}. The figures are the same, "
            "on fewer items: noisier, and probes trained on fewer sentences score lower (README 'Sizes' has "
            "MiniLM's full and laptop numbers side by side); size='full' is the default.")


def relative_cost(n_layers: int, hidden_size: int) -> float:
    """A model's forward cost per token relative to MiniLM-L6's: layers x width^2 over :data:`MINILM_COST`."""
    return n_layers * hidden_size ** 2 / MINILM_COST


def may_advise(size: str, quick: bool, cores: int) -> bool:
    """Whether a run could get :func:`cpu_advice`'s note whatever its model: size ``"full"``, not
    ``quick``, at most :data:`FEW_CORES` cores (the command line asks before it reads a config)."""
    return not quick and check(size) == "full" and cores <= FEW_CORES


def cpu_advice(n_layers: int, hidden_size: int, device_type: str, size: str, quick: bool, cores: int) -> str | None:
    """The note ``bertology run`` prints before a full-size run of a large model on a small CPU: at least
    :data:`ADVICE_FACTOR` times MiniLM's cost per token, on ``"cpu"``, where :func:`may_advise`;
    None otherwise. It suggests ``--size laptop``."""
    factor = relative_cost(n_layers, hidden_size)
    if not may_advise(size, quick, cores) or device_type != "cpu" or factor < ADVICE_FACTOR:
        return None
    return (f"note: this model ({n_layers} layers x {hidden_size}) costs about {factor:.0f}x MiniLM's forward passes, "
            f"on the CPU ({cores} cores) at the full sizes: on a 2-core machine a bert-base-sized model's full run took "
            "an hour even in bfloat16 (README 'Speed and memory'). --size laptop (make reports SIZE=laptop) caps "
            "the samples to about a quarter of the work and lists them in each report.")
