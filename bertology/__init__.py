"""bertology: re-run the classic analyses of what BERT knows and how its attention behaves.

Layers and heads are 0-indexed in code and printed 1-indexed as ``layer-head`` in reports,
as Clark et al. (2019) write them.

The public API is small and imported lazily (``import bertology`` stays fast)::

    import bertology as bt
    lm = bt.load("minilm")                      # or "bert-base-uncased", or a local folder
    bt.show(lm, "the cat sat on the mat")       # interactive head view of one sentence
    stats = bt.stream(lm, [["a", "sentence"]], reducer)    # the engine: maps streamed to reducers
    item = bt.attention_of(lm, "one sentence")  # one input's maps (item.attention, item.encoding)
    vecs = bt.states(lm, [["a", "sentence"]], layers=-1)  # hidden states: (layers, words, hidden) per input
    sc = bt.scorer(lm)                          # cloze scorer: the model's MLM head, else a fitted readout
    bt.deviations("clark.relations")            # where a study departs from the authors' definition
"""
__version__ = "0.1.0"

# ``stream`` is ``bertology.extract.extract`` under a name that a submodule import cannot shadow.
__all__ = ["load", "stream", "states", "attention_of", "show", "scorer", "deviations", "__version__"]


def load(name: str = "minilm", device: str = "auto", **kwargs):
    """Load a BERT-style model with eager attention (``models.load_model``): ``"minilm"`` (the
    embedded default), a Hugging Face id, or a local folder."""
    from .models import load_model

    return load_model(name, device=device, **kwargs)


def show(lm, text: str, text_b: str | None = None, view: str = "head", level: str = "token"):
    """Head view (``view="head"``) or model view (``"model"``) of one input, offline-safe HTML
    for a notebook cell. ``level="word"`` shows Clark's word-level maps instead of word pieces."""
    from . import plots
    from .extract import attention_of

    if view not in ("head", "model"):
        raise ValueError(f"view must be 'head' or 'model', not {view!r}")
    item = attention_of(lm, text, text_b, level=level)
    labels = item.encoding.tokens if level == "token" else item.encoding.unit_labels()
    if view == "model":
        return plots.model_view(item.attention, labels)
    b_start = None
    if text_b:
        b_start = labels.index("[SEP]") + 1 if "[SEP]" in labels else None
    return plots.head_view(item.attention, labels, sentence_b_start=b_start)


def __getattr__(name):
    if name == "stream":
        from .extract import extract

        return extract
    if name == "states":
        from .extract import states

        return states
    if name == "attention_of":
        from .extract import attention_of

        return attention_of
    if name == "scorer":
        from .cloze import get_scorer

        def scorer(lm, source: str = "auto", layer: int | None = None, seed: int = 0):
            """A cloze scorer: ``source="mlm"`` (the model's own head), ``"readout"`` (fitted on
            frozen states), ``"control"`` (random-init MLM) or ``"auto"`` (mlm if present)."""
            return get_scorer(lm, source=source, layer=layer, seed=seed)

        return scorer
    if name == "deviations":
        from .fidelity import lines

        return lines
    raise AttributeError(f"module 'bertology' has no attribute {name!r}")
