"""Numeracy of BERT-style models: how numbers are tokenized, what frozen number embeddings
encode (Wallace et al. 2019), and numerical commonsense cloze (NumerSense, Lin et al. 2020).

Reproduces, for any BERT-style model:

* the observation the Primer in BERTology (Rogers et al. 2020, section on semantic knowledge) takes from Wallace et al.
  (2019): WordPiece cuts numbers into arbitrary chunks, so that similar values such as 1.06
  and 1.08 share no piece after the "." — :func:`integer_pieces`, :func:`decimal_pieces`,
  :func:`similar_pairs`;
* the three synthetic probes of Wallace et al. (2019, §3, Table 4), trained on *frozen*
  number embeddings with the interpolation split (a random 80% of the integers of a range for
  training, the other 20% for testing): **list maximum** (a BiLSTM over five embeddings points
  at the largest; accuracy), **decoding** (an MLP regresses the value; RMSE) and **addition**
  (an MLP on two concatenated embeddings regresses the sum; RMSE) — :func:`probe_list_max`,
  :func:`probe_decoding`, :func:`probe_addition`, :func:`run_probes`;
* NumerSense's masked-word probes ("a bird has [MASK] legs.", answers *no, zero, ..., ten*),
  scored through the shared cloze engine — :func:`load_numersense`, :func:`numersense_metrics`.

Probe inputs are encoded as the authors' code did (Eric-Wallace/numeracy, AllenNLP's BERT
indexer and embedder): a list of five numbers, or a pair to add, is **one** sequence
``[CLS] n1 n2 ... [SEP]`` and each number is the top layer's state at its last word piece
(:class:`ContextEmbedder`, :func:`embed_lists`); a number to decode is ``[CLS] n [SEP]``
(:func:`embed_numbers`). Feeding every number alone (``encode="isolated"``) is our option. The
reported figure is, as in the authors' trainer, the best epoch on the held-out numbers; the last
step's figure is kept beside it. What still differs from the authors is declared with
:func:`bertology.fidelity.declare` below (study ``wallace.probes``).
Everything returns tidy long-format pandas tables; nothing here plots.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .fidelity import declare, option_differs
from .profiling import timed

log = logging.getLogger(__name__)

#: The study names this module declares deviations for.
STUDIES = ("wallace.probes", "numersense")

#: Pairs of similar numbers whose pieces the tokenization section shows (the Primer: 1.06 vs 1.08).
SIMILAR_PAIRS = (
    ("1.06", "1.08"), ("1.5", "1.05"), ("3.14", "3.15"), ("0.99", "1.01"), ("99", "100"),
    ("999", "1000"), ("1999", "2000"), ("1234", "1235"), ("5678", "5679"), ("10000", "10001"),
)
#: NumerSense answer vocabulary (README of INK-USC/NumerSense: "no" and the words zero ... ten).
NUMERSENSE_CANDIDATES = ("no", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: The three probing tasks of Wallace et al. (2019, Table 4) and the metric each reports.
TASKS = {"list_max": "accuracy", "decoding": "rmse", "addition": "rmse"}
STIMULI = Path(__file__).with_name("data") / "stimuli"

#: What Wallace et al. (2019) report for BERT-base, for reference (not targets). Only statements
#: we could check in the paper's abstract and Figure 1 caption (arXiv 1909.07940) are listed; the
#: Table 4 numbers are left out because we could not verify them from a stored copy of the table.
WALLACE_REFERENCE = (
    "GloVe and word2vec accurately encode magnitude for numbers up to 1,000 (abstract).",
    "Character-level embeddings are more precise; ELMo captures numeracy best of the pre-trained "
    "embedders, while BERT, which uses sub-word units, is less exact (abstract).",
    "A decoding probe trained on 80% of [-500, 500] decodes held-out numbers well for GloVe and BERT "
    "but fails to extrapolate outside the training range (Figure 1).",
)
#: Where the authors' definitions were read (Eric-Wallace/numeracy, the official code of §3).
REF_CODE = "Eric-Wallace/numeracy max.py, decoding.py, addition.py, utils.py"
REF_EMBEDDER = ("Eric-Wallace/numeracy utils.py (PretrainedBertIndexer use_starting_offsets=False, "
                "PretrainedBertEmbedder top_layer_only=True) and max.py/addition.py (the whole list or pair "
                "is one TextField); allennlp 0.8.4 wordpiece_indexer.py adds [CLS]/[SEP]")
WALLACE_SOURCE = ("Wallace, Wang, Li, Singh & Gardner (2019), Do NLP Models Know Numbers? Probing Numeracy "
                  "in Embeddings, EMNLP, arXiv:1909.07940")

declare("wallace.probes", "training",
        "Probe training is shortened to fit a CPU: Adam (lr {lr}) with a cosine schedule, {probe_steps} steps for "
        "decoding/addition and {max_steps} for list maximum, batches of {batch}, {n_train_lists} training "
        "lists/pairs, standardised inputs and targets scaled to [-1, 1]; the authors train with SGD (lr 0.01, "
        "momentum 0.5, batches of 20) for up to 1000 epochs with early stopping (patience 10 list maximum, 20 "
        "decoding/addition), on 100,000 lists/pairs, centred but unscaled targets.",
        reference="Eric-Wallace/numeracy max.py, decoding.py, addition.py (__main__: optimizer, Trainer, data sizes)")
declare("wallace.probes", "encode_isolated",
        "Each number of a list or pair is fed alone as [CLS] number [SEP] (encode='{encode}'); the authors' BERT "
        "embedder reads the whole list or pair as one sequence [CLS] n1 n2 ... [SEP].",
        kind="option", when=option_differs("encode", "context"), reference=REF_EMBEDDER)
declare("wallace.probes", "layer_pool",
        "Probes read hidden layer {layer} at the {pool} piece of each number; the authors used the top layer "
        "(top_layer_only=True) at the last piece (use_starting_offsets=False).",
        kind="option", when=lambda o: o.get("layer", "last") != "last" or o.get("pool", "last") != "last",
        reference=REF_EMBEDDER)
declare("wallace.probes", "lstm_rank",
        "The list-maximum BiLSTM's input weights are factored through {lstm_rank} dimensions (speed); the "
        "authors' BiLSTM reads the embeddings directly.",
        kind="option", when=lambda o: o.get("lstm_rank") is not None,
        reference="Eric-Wallace/numeracy max.py (NumberSelector: one-layer BiLSTM, hidden_dim 100, linear output)")
declare("wallace.probes", "seeds",
        "Each cell is the mean over {n_seeds} seeds (different split, data, initialisation), as the authors' "
        "README recommends; the paper's Table 4 reports one run.",
        kind="option", when=lambda o: o.get("n_seeds", 1) != 1,
        reference="Eric-Wallace/numeracy README.md (Example Runs: report the mean/median over runs)")


# ----------------------------------------------------------------------------- tokenization


def _check_tokenizer(tokenizer) -> None:
    if not hasattr(tokenizer, "tokenize"):
        raise TypeError(f"expected a tokenizer with .tokenize(), got {type(tokenizer).__name__}")


def number_pieces(tokenizer, numbers: Sequence[str]) -> pd.DataFrame:
    """Word pieces of each number string: ``[number, pieces, n_pieces, single]``.

    ``pieces`` joins the pieces with spaces (``"1 . 06"``); ``single`` is True when the number is
    one vocabulary item.
    """
    _check_tokenizer(tokenizer)
    numbers = list(numbers)
    for s in numbers:
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"numbers must be non-empty strings, got {s!r}")
    if getattr(tokenizer, "is_fast", False) and numbers:  # one batched call: fast for 10,000 numbers
        ids = tokenizer(numbers, add_special_tokens=False)["input_ids"]
        pieces = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    else:
        pieces = [tokenizer.tokenize(s) for s in numbers]
    rows = [{"number": s, "pieces": " ".join(p), "n_pieces": len(p), "single": len(p) == 1}
            for s, p in zip(numbers, pieces)]
    return pd.DataFrame(rows, columns=["number", "pieces", "n_pieces", "single"])


def integer_pieces(tokenizer, lo: int = 0, hi: int = 10_000) -> pd.DataFrame:
    """Pieces of every integer in ``[lo, hi]`` written in digits (the Primer; Wallace et al. 2019):
    ``[number, value, digits, pieces, n_pieces, single]``."""
    if hi < lo:
        raise ValueError(f"empty integer range [{lo}, {hi}]")
    values = np.arange(lo, hi + 1)
    df = number_pieces(tokenizer, [str(v) for v in values])
    df.insert(1, "value", values)
    df.insert(2, "digits", [len(str(abs(v))) for v in values])
    return df


def decimal_pieces(tokenizer, lo: float = 0.0, hi: float = 10.0, decimals: int = 2) -> pd.DataFrame:
    """Pieces of every decimal in ``[lo, hi)`` with ``decimals`` digits after the point, e.g.
    0.00, 0.01, ..., 9.99: ``[number, value, pieces, n_pieces, single, fraction_pieces]``.

    ``fraction_pieces`` counts the pieces after the ".", which is where similar decimals part ways.
    """
    if decimals < 1:
        raise ValueError(f"decimals must be at least 1, got {decimals}")
    step = 10 ** decimals
    ints = np.arange(int(round(lo * step)), int(round(hi * step)))
    strings = [f"{i / step:.{decimals}f}" for i in ints]
    df = number_pieces(tokenizer, strings)
    df.insert(1, "value", ints / step)
    frac = []
    for s, p in zip(strings, df["pieces"]):
        toks = p.split(" ")
        frac.append(len(toks) - toks.index(".") - 1 if "." in toks else 0)
    df["fraction_pieces"] = frac
    return df


def pieces_summary(df: pd.DataFrame, by: str = "digits") -> pd.DataFrame:
    """Per group: how many numbers, the share that is a single piece, mean and max pieces."""
    if by not in df.columns:
        raise KeyError(f"column {by!r} not in the pieces table (columns: {list(df.columns)})")
    g = df.groupby(by)
    out = pd.DataFrame({
        "n": g.size(),
        "share_single": g["single"].mean(),
        "mean_pieces": g["n_pieces"].mean(),
        "max_pieces": g["n_pieces"].max(),
    }).reset_index()
    return out


def similar_pairs(tokenizer, pairs: Sequence[tuple[str, str]] = SIMILAR_PAIRS) -> pd.DataFrame:
    """Pieces of pairs of similar numbers and how many pieces they share.

    ``[a, b, pieces_a, pieces_b, shared, jaccard, value_gap]``: ``shared`` counts pieces common
    to both (as a set), ``jaccard`` = shared / union.
    """
    rows = []
    for a, b in pairs:
        pa, pb = tokenizer.tokenize(a), tokenizer.tokenize(b)
        sa, sb = set(pa), set(pb)
        rows.append({"a": a, "b": b, "pieces_a": " ".join(pa), "pieces_b": " ".join(pb),
                     "shared": len(sa & sb), "jaccard": len(sa & sb) / len(sa | sb),
                     "value_gap": abs(float(a) - float(b))})
    return pd.DataFrame(rows)


def pair_cosines(ea: np.ndarray, eb: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped embedding matrices."""
    ea, eb = np.asarray(ea, dtype=np.float64), np.asarray(eb, dtype=np.float64)
    if ea.shape != eb.shape:
        raise ValueError(f"embedding matrices differ in shape: {ea.shape} vs {eb.shape}")
    den = np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1)
    return (ea * eb).sum(1) / np.where(den > 0, den, 1.0)


def neighbour_similarity(emb: np.ndarray, values: np.ndarray, offsets: Sequence[int] = (1, 10, 100),
                         n_random: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean cosine between embeddings of numbers ``k`` apart (``emb[i]`` embeds ``values[i]``,
    consecutive integers) against random pairs: ``[pair, offset, mean_cosine, n]``.

    If magnitude shaped the representation, near numbers would be more alike than random ones.
    """
    values = np.asarray(values)
    if len(values) != len(emb):
        raise ValueError(f"{len(emb)} embeddings but {len(values)} values")
    if len(values) > 1 and not np.all(np.diff(values) == 1):
        raise ValueError("values must be consecutive integers")
    rows = []
    for k in offsets:
        if k >= len(values):
            continue
        c = pair_cosines(emb[:-k], emb[k:])
        rows.append({"pair": f"{k} apart", "offset": int(k), "mean_cosine": float(c.mean()), "n": len(c)})
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(values), n_random), rng.integers(0, len(values), n_random)
    keep = i != j
    c = pair_cosines(emb[i[keep]], emb[j[keep]])
    rows.append({"pair": "random", "offset": -1, "mean_cosine": float(c.mean()), "n": int(keep.sum())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- embeddings


def resolve_layer(loaded, layer: int | None) -> int:
    """Index into hidden states (0 = embeddings, n_layers = last layer); None and -1 mean last."""
    n = loaded.info.n_layers
    if layer is None:
        return n
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n - 1 <= layer <= n:
        raise ValueError(f"layer must be an integer in [0, {n}] (0 = embedding layer) or negative from the top, "
                         f"got {layer!r}")
    return int(layer) % (n + 1)


def embed_numbers(loaded, numbers: Sequence[str], layer: int | None = None, pool: str = "last",
                  batch_size: int = 256, cache_dir: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """Frozen representation of each number string, fed alone as ``[CLS] number [SEP]``:
    hidden state of ``layer`` (0 = embedding layer, default the last layer), pooled over the
    number's pieces by ``pool`` ("last" piece as in Wallace et al. 2019, "first" or "mean").

    Returns ``[len(numbers), hidden_size]`` float32. With ``cache_dir`` the states are stored by
    :func:`bertology.extract.states`' cache (keyed by model, revision, layer, pool and the numbers).
    """
    from .extract import states

    if pool not in ("last", "first", "mean"):
        raise ValueError(f"pool must be 'last', 'first' or 'mean', not {pool!r}")
    numbers = [str(s) for s in numbers]
    if not numbers:
        raise ValueError("no numbers to embed")
    bad = [s for s in numbers if not s.strip() or len(s.split()) != 1]
    if bad:
        raise ValueError(f"each number must be one whitespace-free string; bad: {bad[:3]}")
    li = resolve_layer(loaded, layer)
    per = states(loaded, [[s] for s in numbers], layers=[li], pool=pool, batch_size=batch_size, cache=cache_dir,
                 progress=progress, desc="embed numbers")
    return _stack_words(per, 1, numbers)


def _stack_words(per: list[np.ndarray], width: int, inputs) -> np.ndarray:
    """``[n, width, hidden]`` from :func:`bertology.extract.states` arrays of one layer (``[n, hidden]``
    when ``width`` is 1); an input that is not ``width`` words names itself."""
    for i, h in enumerate(per):
        if h.shape[1] != width:
            raise ValueError(f"input {i} is not {width} number(s) ({inputs[i]})")
    out = np.stack([h[0] for h in per]).astype(np.float32)
    return out[:, 0] if width == 1 else out


def embed_lists(loaded, lists: np.ndarray, layer: int | None = None, pool: str = "last", batch_size: int = 256,
                cache_dir: str | Path | None = None, progress: bool = False) -> np.ndarray:
    """Numbers embedded in context, as the authors' AllenNLP BERT embedder fed them: each row of
    ``lists`` (integers, ``[n, k]``) is one input ``[CLS] n1 n2 ... nk [SEP]`` (the numbers as
    words, nothing between them), and each number is the state of ``layer`` (default the last)
    at its ``pool`` piece ("last" as in the authors' ``use_starting_offsets=False``).
    Returns ``[n, k, hidden_size]`` float32, cached like :func:`embed_numbers`."""
    from .extract import states

    if pool not in ("last", "first", "mean"):
        raise ValueError(f"pool must be 'last', 'first' or 'mean', not {pool!r}")
    lists = np.asarray(lists)
    if lists.ndim != 2 or lists.size == 0:
        raise ValueError(f"lists must be a non-empty [n, k] array, got shape {lists.shape}")
    words = [[str(v) for v in row] for row in lists.tolist()]
    li = resolve_layer(loaded, layer)
    per = states(loaded, words, layers=[li], pool=pool, batch_size=batch_size, cache=cache_dir, progress=progress,
                 desc="embed lists")
    return _stack_words(per, lists.shape[1], words)


def value_embedding(values: Sequence[float]) -> np.ndarray:
    """The sanity row: a one-dimensional embedding that *is* the number's value. Any working
    probe must solve the tasks on it (Wallace et al. 2019 list a "value embedding" too)."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


# ----------------------------------------------------------------------------- probes


#: Where the authors' definitions were read (Eric-Wallace/numeracy, the official code of §3).
#: The encodings of a probe input: "context" puts the whole list (or pair) into one sequence
#: ``[CLS] n1 n2 ... [SEP]`` as the authors' AllenNLP BERT embedder did; "isolated" feeds every
#: number alone as ``[CLS] n [SEP]`` (ours: a number's representation without its neighbours).
ENCODINGS = ("context", "isolated")


@dataclass
class ProbeConfig:
    """Sizes and optimisation of the probes.

    The architecture is the authors' (Eric-Wallace/numeracy): ``hidden`` = 100 units in the two
    ReLU layers of the decoding/addition MLPs and in each direction of the one-layer BiLSTM of list
    maximum (``lstm_hidden``); ``lstm_rank=None`` feeds the embeddings to the BiLSTM directly, as
    they do (an integer factors its input weights through that many dimensions, our speed option).
    The optimisation is ours, to fit a CPU: Adam (``lr``) with a cosine schedule for ``steps`` /
    ``max_steps`` updates on ``n_train_lists`` examples, standardised inputs and targets scaled to
    [-1, 1]; the authors train with SGD (lr 0.01, momentum 0.5, batches of 20) for up to 1000
    epochs with early stopping over 100,000 lists/pairs. As the authors' AllenNLP trainer did, the
    held-out numbers are evaluated after every epoch (one pass over the training examples) and the
    best epoch is reported; the last step's figure is kept beside it (``final``).
    """

    hidden: int = 100  # MLP hidden units (decoding, addition); authors: --hidden_dim 100
    lstm_hidden: int = 100  # BiLSTM units per direction (list maximum); authors: --hidden_dim 100
    lstm_rank: int | None = None  # None: authors' BiLSTM on the embeddings; int: factored input weights
    steps: int = 400  # optimisation steps of the MLP probes
    max_steps: int = 300  # optimisation steps of the list-maximum probe
    batch_size: int = 128
    lr: float = 3e-3
    n_train_lists: int = 5000  # list maximum and addition: training examples drawn from training numbers
    n_test_lists: int = 1000  # authors: 1000 held-out lists / pairs
    list_length: int = 5  # authors: 5

    def __post_init__(self):
        for k in ("hidden", "lstm_hidden", "steps", "max_steps", "batch_size", "n_train_lists", "n_test_lists"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"ProbeConfig.{k} must be a positive integer, got {v!r}")
        r = self.lstm_rank
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r <= 0):
            raise ValueError(f"ProbeConfig.lstm_rank must be None or a positive integer, got {r!r}")
        if not 2 <= self.list_length <= MAX_INDEX_LOW:
            raise ValueError(f"ProbeConfig.list_length must be in [2, {MAX_INDEX_LOW}], got {self.list_length}")
        if not self.lr > 0:
            raise ValueError(f"ProbeConfig.lr must be positive, got {self.lr}")


def interpolation_split(lo: int, hi: int, seed: int = 0, train_share: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Wallace et al. (2019, §3.1) interpolation, as in their ``utils.get_intervals``: shuffle the
    integers of ``[lo, hi]``, the first ``int(0.8 n)`` train the probe, the rest test it.
    Returns (train, test) value arrays."""
    if hi - lo < 9:
        raise ValueError(f"range [{lo}, {hi}] is too small to split into train and test numbers")
    values = np.arange(lo, hi + 1)
    np.random.default_rng(seed).shuffle(values)
    k = int(train_share * len(values))
    return values[:k], values[k:]


#: The list maximum is drawn at a sorted index in ``[MAX_INDEX_LOW, n - 1)`` (authors' max.py).
MAX_INDEX_LOW = 10


def distractor_scale(max_index: int) -> float:
    """Standard deviation (in sorted-index units) of the Gaussian that places "near" distractors
    below a list's maximum, as in the authors' ``max.generate_max_data``: 5 when the maximum's index
    is at most 500, else 1% of that index."""
    return 5.0 if max_index <= 500 else 0.01 * max_index


def distractor_index(max_index: int, draw: float) -> int:
    """Sorted index of a near distractor from one Gaussian ``draw`` (authors' rule): step down by
    ``int(draw)`` (truncated toward zero) from the maximum's index; an index at or above the
    maximum becomes the one just below it, a negative one becomes 0."""
    k = max_index - int(draw)
    if k >= max_index:
        return max_index - 1
    return max(k, 0)


def make_max_lists(numbers: np.ndarray, n_lists: int, length: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ``length`` distinct numbers and the position of their maximum, built as the
    authors' ``max.generate_max_data`` builds them (Wallace et al. 2019, appendix).

    With the pool sorted, the maximum is the number at an index drawn uniformly from
    ``[10, n - 1)`` (so the pool's largest number is never a maximum). For half the lists the
    other numbers are drawn uniformly from the indices ``[0, max_index - 1)``; for the other half
    each is :func:`distractor_index` of a Gaussian draw with sd :func:`distractor_scale`, which
    keeps them close below the maximum so that counting digits is not enough. Repeats are
    redrawn; positions are shuffled. Returns ``(lists [n, length], argmax [n])``.
    """
    nums = np.sort(np.unique(numbers))
    if not 2 <= length <= MAX_INDEX_LOW:
        raise ValueError(f"list length must be in [2, {MAX_INDEX_LOW}], got {length}")
    if len(nums) < MAX_INDEX_LOW + 2:
        raise ValueError(f"need at least {MAX_INDEX_LOW + 2} distinct numbers for list-maximum lists, got {len(nums)}")
    rng = np.random.default_rng(seed)
    lists = np.empty((n_lists, length), dtype=nums.dtype)
    for r in range(n_lists):
        top = int(rng.integers(MAX_INDEX_LOW, len(nums) - 1))
        chosen = [top]
        uniform = rng.random() > 0.5
        while len(chosen) < length:
            k = int(rng.integers(0, top - 1)) if uniform else distractor_index(top, rng.normal(0.0, distractor_scale(top)))
            if k not in chosen:
                chosen.append(k)
        row = np.asarray(chosen)
        rng.shuffle(row)
        lists[r] = nums[row]
    return lists, lists.argmax(1)


def make_pairs(numbers: np.ndarray, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Random pairs of two different numbers (authors' ``addition.generate_addition_data``): ``[n, 2]``."""
    numbers = np.asarray(numbers)
    if len(np.unique(numbers)) < 2:
        raise ValueError("need at least two different numbers to make pairs")
    rng = np.random.default_rng(seed)
    a = rng.choice(numbers, n_pairs)
    b = rng.choice(numbers, n_pairs)
    same = a == b
    while same.any():
        b[same] = rng.choice(numbers, int(same.sum()))
        same = a == b
    return np.stack([a, b], 1)


# ----------------------------------------------------------------------------- probe inputs


class TableEmbedder:
    """A fixed vector per integer (row ``v - lo`` embeds ``v``), whatever the list around it:
    the one-number-per-input encoding, the value-encoded sanity row, static embeddings."""

    def __init__(self, matrix: np.ndarray, lo: int = 0):
        self.matrix, self.lo = np.asarray(matrix, dtype=np.float32), int(lo)

    def check(self, lo: int, hi: int) -> None:
        _check_emb(self.matrix[max(lo - self.lo, 0):], lo, hi)
        if lo < self.lo:
            raise ValueError(f"embeddings start at {self.lo}, the range at {lo}")

    def __call__(self, lists: np.ndarray) -> np.ndarray:
        lists = np.asarray(lists)
        return self.matrix[lists - self.lo]


class ContextEmbedder:
    """The authors' encoding of a probe input: the whole list (or pair) is one sequence
    ``[CLS] n1 n2 ... [SEP]`` (numbers as words, no separators between them) and each number is
    the state of ``layer`` at its ``pool`` piece ("last", as their AllenNLP embedder with
    ``use_starting_offsets=False``). A one-number input is ``[CLS] n [SEP]``, i.e. the isolated
    encoding, which :func:`embed_numbers` computes once per number: the embedder keeps every
    number it has embedded, so the decoding probes of all ranges and seeds (each its own subset of
    the integers) run each number through the model once (on bert-base, 2026-12-03: the isolated
    numbers cost 156 s of notebook 06 when each range and seed embedded its own numbers)."""

    def __init__(self, loaded, layer: int | None = None, pool: str = "last", batch_size: int = 256,
                 cache_dir: str | Path | None = None, progress: bool = False):
        self.loaded, self.layer, self.pool = loaded, layer, pool
        self.batch_size, self.cache_dir, self.progress = batch_size, cache_dir, progress
        self._alone: dict[int, np.ndarray] = {}  # number -> its isolated embedding

    def _isolated(self, values: np.ndarray) -> np.ndarray:
        """``[len(values), d]``: each number alone, embedded only the first time it is asked for."""
        new = sorted({int(v) for v in values.tolist()} - self._alone.keys())
        if new:
            emb = embed_numbers(self.loaded, [str(v) for v in new], self.layer, self.pool, self.batch_size,
                                cache_dir=self.cache_dir, progress=self.progress)
            self._alone.update(zip(new, emb))
        return np.stack([self._alone[int(v)] for v in values.tolist()])

    def check(self, lo: int, hi: int) -> None:
        pass

    def __call__(self, lists: np.ndarray) -> np.ndarray:
        lists = np.asarray(lists)
        if lists.ndim != 2:
            raise ValueError(f"lists must be [n, k], got shape {lists.shape}")
        if lists.shape[1] == 1:
            return self._isolated(lists[:, 0])[:, None, :]
        rows, inv = np.unique(lists, axis=0, return_inverse=True)  # a repeated list is run once
        emb = embed_lists(self.loaded, rows, self.layer, self.pool, self.batch_size, cache_dir=self.cache_dir,
                          progress=self.progress)
        return emb[np.asarray(inv).reshape(-1)]


def number_embedder(emb, lo: int = 0):
    """``emb`` as a callable ``lists [n, k] -> [n, k, d]``: a matrix becomes a :class:`TableEmbedder`."""
    if isinstance(emb, (TableEmbedder, ContextEmbedder)) or (callable(emb) and hasattr(emb, "check")):
        return emb
    return TableEmbedder(emb, lo)


# ----------------------------------------------------------------------------- probes


@contextlib.contextmanager
def _one_thread():
    """Train an MLP probe (decoding, addition) on one CPU thread: the MLPs are tiny, and with
    several threads (worse on a busy machine) thread synchronisation costs about what it saves.
    Only the training runs inside: the model's forward passes that embed the inputs keep every
    thread. The list-maximum BiLSTM is not pinned: its input products (128 lists x 5 x hidden
    size into 8 x 100 gates) are large enough to gain from threads (measured on 2 cores: 1.5x at
    384 and 768 dimensions, 2026-12-03)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _standardizer(x_train: np.ndarray):
    x_train = x_train.reshape(-1, x_train.shape[-1])
    mu = x_train.mean(0)
    sd = x_train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return lambda x: ((x - mu) / sd).astype(np.float32)


def _mlp(d_in: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


class _MaxPointer(torch.nn.Module):
    """The authors' list-maximum probe: a one-layer BiLSTM over the list's embeddings, a linear
    score per position, softmax over positions. With ``rank`` the BiLSTM's input weights are
    factored through a ``rank``-dimensional linear layer (our speed option; no nonlinearity added)."""

    def __init__(self, d_in: int, hidden: int, rank: int | None = None):
        super().__init__()
        self.proj = torch.nn.Linear(d_in, rank) if rank else torch.nn.Identity()
        self.lstm = torch.nn.LSTM(rank or d_in, hidden, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(2 * hidden, 1)

    def forward(self, x):
        h, _ = self.lstm(self.proj(x))
        return self.out(h).squeeze(-1)


@timed("train")
def _train(probe, x: torch.Tensor, y: torch.Tensor, loss_fn, cfg: ProbeConfig, gen: torch.Generator,
           steps: int, evaluate: Callable[[], float] | None = None) -> list[tuple[int, float]]:
    """``steps`` Adam updates over shuffled passes (epochs) through ``(x, y)``; ``evaluate()``
    (the held-out metric) is called after every epoch and after the last step. Returns
    ``[(step, metric), ...]``; the probe is left at its last step, in eval mode."""
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    n = len(x)
    bs = min(cfg.batch_size, n)
    per_epoch = -(-n // bs)
    history: list[tuple[int, float]] = []
    perm = torch.randperm(n, generator=gen)
    for step in range(1, steps + 1):
        probe.train()
        b = (step - 1) % per_epoch
        if b == 0 and step > 1:
            perm = torch.randperm(n, generator=gen)
        idx = perm[b * bs:(b + 1) * bs]
        opt.zero_grad()
        loss = loss_fn(probe(x[idx]), y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 5.0)
        opt.step()
        sched.step()
        if evaluate is not None and (b == per_epoch - 1 or step == steps):
            probe.eval()
            with torch.inference_mode():
                history.append((step, float(evaluate())))
    probe.eval()
    return history


def best_and_final(history: Sequence[tuple[int, float]], higher_is_better: bool) -> dict:
    """The authors' reported figure and ours from a held-out history ``[(step, metric), ...]``:
    ``best`` is the best epoch on the held-out numbers (their AllenNLP ``Trainer`` validated on the
    test numbers every epoch and printed ``best_validation_accuracy`` / the root of
    ``best_validation_loss``); ``final`` is the last evaluation (stricter: no selection on the
    test numbers). Ties keep the earliest epoch. Returns ``{"best", "final", "best_step", "n_evals"}``."""
    if not history:
        raise ValueError("empty held-out history")
    vals = np.array([v for _, v in history], dtype=float)
    i = int(np.argmax(vals) if higher_is_better else np.argmin(vals))
    return {"best": float(vals[i]), "final": float(vals[-1]), "best_step": int(history[i][0]),
            "n_evals": len(history)}


def _check_emb(emb: np.ndarray, lo: int, hi: int) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < hi - lo + 1:
        raise ValueError(f"embeddings must be a matrix with one row per integer of [{lo}, {hi}] "
                         f"({hi - lo + 1} rows), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return emb


def _features(embed, lists: np.ndarray) -> np.ndarray:
    x = np.asarray(embed(lists), dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x


def _result(metric: str, hist, higher: bool, **extra) -> dict:
    bf = best_and_final(hist, higher)
    return {metric: bf["best"], f"{metric}_final": bf["final"], "best_step": bf["best_step"],
            "n_evals": bf["n_evals"], **extra}


def probe_decoding(emb, lo: int, hi: int, seed: int = 0, cfg: ProbeConfig | None = None) -> dict:
    """Wallace et al. (2019, §3.1, Table 4 "Decoding"; authors' ``decoding.py``): an MLP (two
    hidden ReLU layers of ``cfg.hidden``) regresses a number's value from its embedding, each
    number its own input; trained on the interpolation split's training numbers, RMSE on the
    held-out ones, best epoch (``rmse``) and last step (``rmse_final``). ``emb``: a matrix (row
    ``v - lo``) or an embedder (:class:`ContextEmbedder`). Targets are scaled to [-1, 1] for
    training; RMSEs are in the original units. Returns ``{"rmse", "rmse_final", "best_step",
    "n_evals", "n_train", "n_test", "test", "pred"}`` (``pred`` at the best epoch)."""
    cfg = cfg or ProbeConfig()
    embed = number_embedder(emb, lo)
    embed.check(lo, hi)
    train, test = interpolation_split(lo, hi, seed)
    xtr, xte = _features(embed, train[:, None])[:, 0], _features(embed, test[:, None])[:, 0]
    std = _standardizer(xtr)
    center, scale = (lo + hi) / 2, max((hi - lo) / 2, 1.0)
    best = {"rmse": np.inf, "pred": None}
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        probe = _mlp(xtr.shape[1], cfg.hidden)
        x, xt = torch.from_numpy(std(xtr)), torch.from_numpy(std(xte))
        y = torch.from_numpy(((train - center) / scale).astype(np.float32))

        def evaluate():
            pred = probe(xt).squeeze(-1).numpy() * scale + center
            rmse = float(np.sqrt(np.mean((pred - test) ** 2)))
            if rmse < best["rmse"]:
                best.update(rmse=rmse, pred=pred)
            return rmse

        hist = _train(probe, x, y, lambda p, t: torch.nn.functional.mse_loss(p.squeeze(-1), t), cfg, gen,
                      cfg.steps, evaluate)
    return _result("rmse", hist, False, n_train=len(train), n_test=len(test), test=test, pred=best["pred"])


def probe_addition(emb, lo: int, hi: int, seed: int = 0, cfg: ProbeConfig | None = None) -> dict:
    """Wallace et al. (2019, §3.1, Table 4 "Addition"; authors' ``addition.py``): an MLP on the
    concatenated embeddings of two numbers regresses their sum; pairs drawn from the training
    numbers train it, pairs of held-out numbers test it (RMSE in original units; best epoch
    ``rmse``, last step ``rmse_final``). With a :class:`ContextEmbedder` the pair is one input
    ``[CLS] a b [SEP]`` as in the authors' code. Returns ``{"rmse", "rmse_final", "best_step",
    "n_evals", "n_train", "n_test"}``."""
    cfg = cfg or ProbeConfig()
    embed = number_embedder(emb, lo)
    embed.check(lo, hi)
    train, test = interpolation_split(lo, hi, seed)
    ptrain = make_pairs(train, cfg.n_train_lists, seed)
    ptest = make_pairs(test, cfg.n_test_lists, seed + 1)
    ftr, fte = _features(embed, ptrain), _features(embed, ptest)
    std = _standardizer(ftr)

    def flat(f):
        return std(f).reshape(len(f), -1)

    center, scale = float(lo + hi), max(float(hi - lo), 1.0)
    target = ptest.sum(1)
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        probe = _mlp(2 * ftr.shape[2], cfg.hidden)
        x, xt = torch.from_numpy(flat(ftr)), torch.from_numpy(flat(fte))
        y = torch.from_numpy(((ptrain.sum(1) - center) / scale).astype(np.float32))

        def evaluate():
            pred = probe(xt).squeeze(-1).numpy() * scale + center
            return float(np.sqrt(np.mean((pred - target) ** 2)))

        hist = _train(probe, x, y, lambda p, t: torch.nn.functional.mse_loss(p.squeeze(-1), t), cfg, gen,
                      cfg.steps, evaluate)
    return _result("rmse", hist, False, n_train=len(ptrain), n_test=len(ptest))


def probe_list_max(emb, lo: int, hi: int, seed: int = 0, cfg: ProbeConfig | None = None) -> dict:
    """Wallace et al. (2019, §3.1, Table 4 "List Maximum"; authors' ``max.py``): a BiLSTM reads
    the embeddings of a list of five numbers and a softmax over positions points at the largest;
    lists of training numbers (:func:`make_max_lists`) train it, lists of held-out numbers test it.
    With a :class:`ContextEmbedder` each list is one input ``[CLS] n1 ... n5 [SEP]`` as in the
    authors' code. Returns ``{"accuracy", "accuracy_final", "best_step", "n_evals", "n_train",
    "n_test"}`` (best epoch / last step; chance is 1/5)."""
    cfg = cfg or ProbeConfig()
    embed = number_embedder(emb, lo)
    embed.check(lo, hi)
    train, test = interpolation_split(lo, hi, seed)
    ltrain, ytrain = make_max_lists(train, cfg.n_train_lists, cfg.list_length, seed)
    ltest, ytest = make_max_lists(test, cfg.n_test_lists, cfg.list_length, seed + 1)
    ftr, fte = _features(embed, ltrain), _features(embed, ltest)
    std = _standardizer(ftr)
    with torch.random.fork_rng(devices=[]):  # every thread (see _one_thread)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        probe = _MaxPointer(ftr.shape[2], cfg.lstm_hidden, cfg.lstm_rank)
        x, xt = torch.from_numpy(std(ftr)), torch.from_numpy(std(fte))
        y = torch.from_numpy(ytrain.astype(np.int64))

        def evaluate():
            return float((probe(xt).argmax(1).numpy() == ytest).mean())

        hist = _train(probe, x, y, torch.nn.functional.cross_entropy, cfg, gen, cfg.max_steps, evaluate)
    return _result("accuracy", hist, True, n_train=len(ltrain), n_test=len(ltest))


PROBES: dict[str, Callable[..., dict]] = {"list_max": probe_list_max, "decoding": probe_decoding,
                                          "addition": probe_addition}


def run_probes(embeddings: Mapping[str, tuple[object, str]], ranges: Sequence[int] = (99, 999, 9999),
               tasks: Sequence[str] = tuple(TASKS), seeds: Sequence[int] = (0, 1, 2), lo: int = 0,
               cfg: ProbeConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Every probe on every embedding, range and seed (Wallace et al. 2019, Table 4).

    ``embeddings``: name -> (matrix with row ``v - lo`` for each integer ``v`` of ``[lo, max(ranges)]``
    or an embedder such as :class:`ContextEmbedder`, human-readable label saying where it came from).
    Returns the long table ``[task, metric, range_max, embedding, label, seed, value, final,
    best_step, n_evals, n_train, n_test]``: ``value`` is the best epoch on the held-out numbers
    (the authors' figure), ``final`` the last step (stricter).
    """
    unknown = [t for t in tasks if t not in PROBES]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(PROBES)}")
    if not seeds:
        raise ValueError("need at least one seed")
    cfg = cfg or ProbeConfig()
    jobs = [(t, r, name, s) for r in ranges for t in tasks for name in embeddings for s in seeds]
    rows = []
    for task, r, name, s in tqdm(jobs, desc="numeracy probes", disable=not progress):
        emb, label = embeddings[name]
        res = PROBES[task](emb, lo, int(r), seed=int(s), cfg=cfg)
        metric = TASKS[task]
        rows.append({"task": task, "metric": metric, "range_max": int(r), "embedding": name, "label": label,
                     "seed": int(s), "value": res[metric], "final": res[f"{metric}_final"],
                     "best_step": res["best_step"], "n_evals": res["n_evals"],
                     "n_train": res["n_train"], "n_test": res["n_test"]})
    return pd.DataFrame(rows)


def summarize_probes(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1; 0 for one seed) and number of seeds per
    (task, metric, range, embedding), of the best-epoch ``value`` (``mean``, ``std``) and, when
    the table has it, of the last-step ``final`` (``mean_final``):
    ``[task, metric, range_max, embedding, label, mean, std, n_seeds(, mean_final)]``."""
    keys = ["task", "metric", "range_max", "embedding", "label"]
    g = df.groupby(keys, sort=False)
    out = g["value"].agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                         n_seeds="count")
    if "final" in df.columns:
        out["mean_final"] = g["final"].mean()
    return out.reset_index()


# ----------------------------------------------------------------------------- NumerSense


def load_numersense(path: str | Path | None = None, split: str = "validation") -> tuple[pd.DataFrame, str]:
    """NumerSense probes with gold answers: ``([item, probe, context, answer], source)``.

    ``path=None`` takes ``data/validation.masked.tsv`` from the data mirror/cache/download
    (Lin et al. 2020; the only split with public answers) and, when that is unavailable, the
    small set of numeric cloze items written for bertology (``data/stimuli/numeracy_cloze.tsv``);
    ``source`` says which. ``context`` has the model-neutral ``[MASK]`` placeholder.
    """
    from .data import DataUnavailableError, data_path

    if split != "validation":
        raise ValueError("only the NumerSense validation split has public answers; split must be 'validation'")
    source = "NumerSense validation (Lin et al. 2020)"
    if path is None:
        try:
            path = data_path("numersense", "data/validation.masked.tsv")
        except DataUnavailableError as exc:
            log.info("NumerSense unavailable (%s); using the shipped numeric cloze items", exc)
            path, source = STIMULI / "numeracy_cloze.tsv", "bertology numeric cloze items (shipped fallback)"
    else:
        source = str(path)
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{i + 1}: expected 'probe<TAB>answer', got {line[:80]!r}")
        probe, answer = parts[0].strip(), parts[1].strip().lower()
        if probe.count("<mask>") != 1:
            raise ValueError(f"{path}:{i + 1}: the probe must contain exactly one <mask>: {probe[:80]!r}")
        if answer not in NUMERSENSE_CANDIDATES:
            raise ValueError(f"{path}:{i + 1}: answer {answer!r} is not one of {NUMERSENSE_CANDIDATES}")
        rows.append({"probe": probe, "context": probe.replace("<mask>", "[MASK]"), "answer": answer})
    if not rows:
        raise ValueError(f"{path} holds no probes")
    df = pd.DataFrame(rows)
    df.insert(0, "item", range(len(df)))
    return df, source


def candidate_ranks(targets: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Rank of each item's gold answer among the candidates, from cloze log-probabilities.

    ``targets``: ``[item, target, logprob]`` (one row per item and candidate, as
    ``cloze.ClozeResult.targets``). Ties count against the gold answer (rank = 1 + number of
    candidates scoring at least as high, other than itself); a candidate scored NaN (e.g. a
    multi-piece word that was skipped) ranks below every scored one.
    Returns ``items`` plus ``[gold_logprob, gold_rank, n_candidates, top]``.
    """
    need = {"item", "target", "logprob"}
    if not need <= set(targets.columns):
        raise KeyError(f"targets needs columns {sorted(need)}, has {list(targets.columns)}")
    t = targets[["item", "target", "logprob"]].copy()
    t["lp"] = t["logprob"].astype(float).fillna(-np.inf)
    out = []
    by_item = {k: g for k, g in t.groupby("item")}
    for row in items.itertuples(index=False):
        g = by_item.get(row.item)
        if g is None or row.answer not in set(g["target"]):
            raise ValueError(f"item {row.item}: no score for its gold answer {row.answer!r}")
        gold = float(g.loc[g["target"] == row.answer, "lp"].iloc[0])
        others = g.loc[g["target"] != row.answer, "lp"].to_numpy()
        rank = 1 + int((others >= gold).sum()) if np.isfinite(gold) else len(g)
        top = g.sort_values("lp", ascending=False, kind="stable")["target"].iloc[0]
        out.append({**row._asdict(), "gold_logprob": gold if np.isfinite(gold) else np.nan, "gold_rank": rank,
                    "n_candidates": len(g), "top": top})
    return pd.DataFrame(out)


def numersense_metrics(ranked: pd.DataFrame, ks: Sequence[int] = (1, 2, 3)) -> pd.DataFrame:
    """Hit@k of the gold answer among the candidates (NumerSense's measure, Lin et al. 2020, §4)
    and what a uniform guess would get: ``[metric, value, chance, n]``."""
    n = len(ranked)
    if n == 0:
        raise ValueError("no ranked items")
    m = int(ranked["n_candidates"].iloc[0])
    rows = [{"metric": f"hit@{k}", "value": float((ranked["gold_rank"] <= k).mean()), "chance": min(k / m, 1.0), "n": n}
            for k in ks]
    rows.append({"metric": "mean_rank", "value": float(ranked["gold_rank"].mean()), "chance": (m + 1) / 2, "n": n})
    return pd.DataFrame(rows)


def majority_baseline(items: pd.DataFrame, train_answers: Sequence[str] | None = None) -> dict:
    """Hit@1 of always answering the most frequent answer — of ``train_answers`` when given,
    otherwise of the items themselves (an optimistic, in-sample bound, labelled as such)."""
    answers = pd.Series(list(train_answers) if train_answers is not None else items["answer"])
    top = answers.value_counts().idxmax()
    return {"answer": top, "hit@1": float((items["answer"] == top).mean()),
            "in_sample": train_answers is None}


def score_numersense(scorer, items: pd.DataFrame, candidates: Sequence[str] = NUMERSENSE_CANDIDATES,
                     batch_size: int = 32) -> pd.DataFrame:
    """Score every candidate at each probe's ``[MASK]`` with the shared cloze engine
    (``bertology.cloze``) and rank the gold answers (:func:`candidate_ranks`). Every row carries
    the scorer's ``source`` ("mlm", "readout" or "control") and ``label``."""
    from . import cloze

    res = cloze.cloze(scorer, list(items["context"]), [list(candidates)] * len(items), vocab=list(candidates),
                      batch_size=batch_size)
    ranked = candidate_ranks(res.targets, items)
    ranked.insert(1, "source", scorer.source)
    ranked.insert(2, "label", scorer.label)
    return ranked


# ----------------------------------------------------------------------------- notebook helpers


def probe_embeddings(loaded, control, max_value: int, layer: int | None = None, pool: str = "last",
                     encode: str = "context", batch_size: int = 256, cache_dir: str | Path | None = None,
                     control_seed: int = 0) -> dict[str, tuple[object, str]]:
    """The three embeddings the probes compare, name -> (embedder, label): ``model`` and
    ``control`` (a random-init copy of the model) encoded by ``encode`` ("context": the authors'
    one sequence per list/pair, :class:`ContextEmbedder`; "isolated": every number alone,
    :class:`TableEmbedder` over :func:`embed_numbers`), and ``value``, the number itself."""
    if encode not in ENCODINGS:
        raise ValueError(f"encode must be one of {ENCODINGS}, got {encode!r}")
    li = resolve_layer(loaded, layer)
    how = "each list/pair one input" if encode == "context" else "each number alone"
    out = {}
    for key, lm, what in (("model", loaded, f"{loaded.info.name} layer {li}"),
                          ("control", control, f"random-init control layer {li} (seed {control_seed})")):
        if encode == "context":
            emb = ContextEmbedder(lm, li, pool, batch_size, cache_dir)
        else:
            emb = TableEmbedder(embed_numbers(lm, [str(i) for i in range(max_value + 1)], li, pool, batch_size,
                                              cache_dir=cache_dir, progress=False))
        out[key] = (emb, f"fitted probe on {what} ({pool} piece, {how})")
    out["value"] = (TableEmbedder(value_embedding(np.arange(max_value + 1))),
                    "fitted probe on value-encoded sanity embedding")
    return out


def decoding_predictions(embeddings: Mapping[str, tuple[object, str]], hi: int, seed: int = 0,
                         cfg: ProbeConfig | None = None, keys: Sequence[str] = ("model", "control")) -> dict:
    """Held-out decoding predictions of ``[0, hi]`` for each embedding in ``keys``:
    ``{"<label>\\nRMSE x": (test values, predictions at the best epoch)}`` for the scatter plot."""
    out = {}
    for key in keys:
        emb, label = embeddings[key]
        res = probe_decoding(emb, 0, hi, seed=seed, cfg=cfg)
        out[f"{label}\nRMSE {res['rmse']:.1f}"] = (res["test"], res["pred"])
    return out


def neighbour_table(embeddings: Mapping[str, tuple[object, str]], max_value: int, seed: int = 0,
                    keys: Sequence[str] = ("model", "control")) -> pd.DataFrame:
    """:func:`neighbour_similarity` of each number's own (isolated) representation, for each
    embedding in ``keys``: ``[embedding, pair, offset, mean_cosine, n]``."""
    values = np.arange(max_value + 1)
    parts = []
    for key in keys:
        emb = number_embedder(embeddings[key][0])
        t = neighbour_similarity(emb(values[:, None])[:, 0], values, seed=seed)
        t.insert(0, "embedding", key)
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def numersense_tables(scorers: Sequence, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank the gold answers with every scorer and compute hit@k per scorer:
    ``(ranked items, metrics [source, label, metric, value, chance, n])``."""
    ranked, metrics = [], []
    for sc in scorers:
        rk = score_numersense(sc, items)
        ranked.append(rk)
        m = numersense_metrics(rk)
        m.insert(0, "source", sc.source)
        m.insert(1, "label", sc.label)
        metrics.append(m)
    return pd.concat(ranked, ignore_index=True), pd.concat(metrics, ignore_index=True)


def probe_cell(probes: pd.DataFrame, task: str, range_max: int, embedding: str):
    """The summary row (:func:`summarize_probes`) of one task, range and embedding, or None."""
    d = probes[(probes.task == task) & (probes.range_max == range_max) & (probes.embedding == embedding)]
    return d.iloc[0] if len(d) else None


def decoding_beats_control(probes: pd.DataFrame, ranges: Sequence[int]) -> bool:
    """Whether the decoding RMSE (best-epoch mean) on the model is below the random-init control's
    in every range of ``ranges`` (False when a cell is missing)."""
    for r in ranges:
        m, c = probe_cell(probes, "decoding", r, "model"), probe_cell(probes, "decoding", r, "control")
        if m is None or c is None or not m["mean"] < c["mean"]:
            return False
    return True


def findings(ints: pd.DataFrame, by_digits: pd.DataFrame, decs: pd.DataFrame, pairs: pd.DataFrame,
             probes: pd.DataFrame, near: pd.DataFrame, ns: pd.DataFrame, majority: dict, *, ranges: Sequence[int],
             probe_layer: int, n_seeds: int, tokenize_max: int, model_name: str, has_mlm_head: bool,
             n_items: int) -> list[str]:
    """The "what this run shows" bullet points of notebook 06, computed from its tables:
    tokenization shares, the probe cells (best epoch on held-out numbers, as the authors report,
    with the last step's figure beside list maximum), whether decoding beats the control in every
    range, neighbour cosines, and NumerSense hit@1 against a uniform guess and the majority answer."""
    share = by_digits.set_index("digits")["share_single"]
    p0 = pairs.iloc[0]
    lines = [f"- **Tokenization**: {ints['single'].mean():.1%} of the integers 0–{tokenize_max} are a single word piece "
             f"(1-digit {share.get(1, float('nan')):.0%}, 4-digit {share.get(4, float('nan')):.0%}); decimals "
             f"0.00–9.99 take {decs['n_pieces'].mean():.2f} pieces on average. {p0['a']} → `{p0['pieces_a']}`, "
             f"{p0['b']} → `{p0['pieces_b']}`: {p0['shared']} shared pieces, representation cosine {p0['cosine']:.2f}."]
    for r in ranges:
        m, c, v = (probe_cell(probes, "list_max", r, e) for e in ("model", "control", "value"))
        dm, dc, dv = (probe_cell(probes, "decoding", r, e) for e in ("model", "control", "value"))
        am, ac = (probe_cell(probes, "addition", r, e) for e in ("model", "control"))
        if any(x is None for x in (m, c, v, dm, dc, dv, am, ac)):
            continue
        final = f" (last step {m['mean_final']:.2f})" if "mean_final" in m.index else ""
        runs, spread = (("one run, as the paper's Table 4", "") if n_seeds == 1 else
                        (f"mean ± std over {n_seeds} seeds", f" ± {m['std']:.2f}"))
        lines.append(f"- **[0, {r}]** (best epoch on held-out numbers, {runs}; fitted probes): "
                     f"list maximum {m['mean']:.2f}{spread}{final} on the model vs {c['mean']:.2f} on the "
                     f"random-init control (value sanity {v['mean']:.2f}, chance 0.20); decoding RMSE {dm['mean']:.1f} "
                     f"vs {dc['mean']:.1f} (value {dv['mean']:.2f}); addition RMSE {am['mean']:.1f} vs {ac['mean']:.1f}.")
    better = decoding_beats_control(probes, ranges)
    lines.append(f"- Pre-training {'did' if better else 'did not consistently'} put value information into layer "
                 f"{probe_layer}: decoding from the model is {'better' if better else 'not always better'} than from "
                 "the random-init control in every range probed.")
    nm_ = near[near.embedding == "model"].set_index("pair")["mean_cosine"]
    lines.append(f"- Without a probe: integers 1 apart have cosine {nm_.get('1 apart', float('nan')):.2f} vs "
                 f"{nm_.get('random', float('nan')):.2f} for random pairs (model).")
    for lab, g in ns.groupby("label", sort=False):
        h = g.set_index("metric")
        above = h.loc["hit@1", "value"] > h.loc["hit@1", "chance"]
        lines.append(f"- **NumerSense** ({n_items} probes, {lab}): hit@1 {h.loc['hit@1', 'value']:.1%}, "
                     f"{'above' if above else 'not above'} a uniform guess ({h.loc['hit@1', 'chance']:.1%}); "
                     f"always answering '{majority['answer']}' would get {majority['hit@1']:.1%} (in-sample).")
    if not has_mlm_head:
        lines.append(f"- {model_name} has no MLM head, so its own NumerSense answers were **not** evaluated; the "
                     "readout row is a fitted readout, not the model's prediction.")
    return lines


# ----------------------------------------------------------------------------- notebook 06 helpers

#: the ``source`` :func:`load_numersense` reports when NumerSense cannot be had
NUMERSENSE_FALLBACK = "bertology numeric cloze items (shipped fallback)"


def tokenization_values(ints: pd.DataFrame) -> dict:
    """From :func:`integer_pieces`: the share of integers that are one word piece and the first
    integer that is not (None when every integer is one piece)."""
    multi = ints["value"][~ints["single"]]
    return {"share_single_piece_integers": float(ints["single"].mean()),
            "first_multi_piece_integer": int(multi.min()) if len(multi) else None}


def key_numbers(probes: pd.DataFrame, top: int) -> dict[str, float]:
    """Notebook 06's headline numbers: list-maximum accuracy and decoding RMSE of the probe on the
    model's embeddings over [0, ``top``] (best epoch, mean over seeds); a cell not probed is left out."""
    out = {}
    for task, name in (("list_max", "list max accuracy"), ("decoding", "decoding RMSE")):
        cell = probe_cell(probes, task, top, "model")
        if cell is not None:
            out[f"{name} [0,{top}] (probe on model, best epoch)"] = float(cell["mean"])
    return out


def reference_text() -> str:
    """Wallace et al.'s findings as a Markdown block with their source (:data:`WALLACE_REFERENCE`)."""
    return ("**Wallace et al. (2019) on BERT-base, for reference, not target** (" + WALLACE_SOURCE + "):\n"
            + "\n".join(f"- {s}" for s in WALLACE_REFERENCE)
            + "\n\nTable 4's BERT numbers are not printed here: we could not check them against a copy of the table.")


def pair_similarity(loaded, pairs: pd.DataFrame, layer: int, pool: str = "last", batch_size: int = 256) -> pd.DataFrame:
    """:func:`similar_pairs` with the cosine of the two numbers' frozen representations (each fed
    alone, :func:`embed_numbers` at hidden state ``layer``, ``pool`` piece) and a ``source`` label."""
    ea = embed_numbers(loaded, pairs["a"].tolist(), layer, pool, batch_size, progress=False)
    eb = embed_numbers(loaded, pairs["b"].tolist(), layer, pool, batch_size, progress=False)
    return pairs.assign(cosine=pair_cosines(ea, eb), source=f"{loaded.info.name} layer {layer} ({pool} piece)")


# ----------------------------------------------------------------------------- notebook 06: one function a section


def probe_setup(run, layer: int | None = -1, encode: str = "context", pool: str = "last", *, max_range: int = 9999,
                n_seeds: int = 1, probe_steps: int = 400, max_steps: int = 300, n_train_lists: int = 5000,
                n_test_lists: int = 1000, lstm_rank: int | None = None) -> tuple[int, ProbeConfig, list[int]]:
    """Notebook 06's probe settings: the hidden state the probes read (:func:`resolve_layer` of
    ``layer``), the :class:`ProbeConfig` and the integer ranges probed (those of 99, 999, 9999 up
    to ``max_range``; ``[max_range]`` when it is below 99). Records on ``run``
    (:class:`bertology.notebook.Run`) ``probe_layer``, ``ranges`` and ``encode`` and the method
    ``wallace.probes`` with its options. A bad ``layer`` or ``lstm_rank`` is a
    :class:`bertology.notebook.ParameterError`. Returns ``(probe_layer, cfg, ranges)``."""
    from .notebook import ParameterError

    try:
        probe_layer = resolve_layer(run.loaded, layer)
        cfg = ProbeConfig(steps=probe_steps, max_steps=max_steps, n_train_lists=n_train_lists,
                          n_test_lists=n_test_lists, lstm_rank=lstm_rank)
    except ValueError as exc:
        raise ParameterError(f"parameter 'layer'/'lstm_rank': {exc}") from None
    ranges = [r for r in (99, 999, 9999) if r <= max_range] or [max_range]
    run.record(probe_layer=probe_layer, ranges=ranges, encode=encode)
    run.method("wallace.probes", lr=cfg.lr, probe_steps=probe_steps, max_steps=max_steps, batch=cfg.batch_size,
               n_train_lists=n_train_lists, encode=encode, pool=pool, lstm_rank=lstm_rank, n_seeds=n_seeds,
               layer="last" if probe_layer == run.info.n_layers else probe_layer)
    return probe_layer, cfg, ranges


@dataclass
class Tokenization:
    """:func:`tokenization_study`: the pieces of every integer (:func:`integer_pieces`) and
    decimal (:func:`decimal_pieces`), the integers' :func:`pieces_summary` by digits and how many
    decimals take ``n_pieces`` pieces (``n_pieces, n``)."""

    integers: pd.DataFrame
    decimals: pd.DataFrame
    by_digits: pd.DataFrame
    decimal_summary: pd.DataFrame


def tokenization_study(run, tokenize_max: int = 10_000) -> Tokenization:
    """Notebook 06, section 1: how the tokenizer of ``run.loaded`` cuts the integers
    0..``tokenize_max`` and the decimals 0.00–9.99. Records on ``run``
    (:class:`bertology.notebook.Run`) :func:`tokenization_values` and the key number "share of
    integers 0-10,000 that are one piece"; the tables are left to the caller."""
    tok = run.loaded.tokenizer
    ints = integer_pieces(tok, 0, tokenize_max)
    decs = decimal_pieces(tok, 0.0, 10.0, decimals=2)
    by_digits = pieces_summary(ints, by="digits")
    decimal_summary = decs["n_pieces"].value_counts().sort_index().rename_axis("n_pieces").reset_index(name="n")
    run.record(**tokenization_values(ints))
    run.key("share of integers 0-10,000 that are one piece", ints["single"].mean())
    return Tokenization(ints, decs, by_digits, decimal_summary)


@dataclass
class ProbeStudy:
    """:func:`probe_study`: the embeddings the probes read (:func:`probe_embeddings`, name ->
    (embedder, label)), every probe run (:func:`run_probes`) and their :func:`summarize_probes`."""

    embeddings: dict[str, tuple[object, str]]
    runs: pd.DataFrame
    summary: pd.DataFrame

    @property
    def labels(self) -> dict[str, str]:
        """Embedding name -> label (where its numbers came from)."""
        return {k: lab for k, (_, lab) in self.embeddings.items()}


def probe_study(run, ranges: Sequence[int], layer: int, pool: str = "last", encode: str = "context",
                batch_size: int = 256, n_seeds: int = 1, cfg: ProbeConfig | None = None,
                progress: bool = True) -> ProbeStudy:
    """Notebook 06, section 2 (Wallace et al. 2019, Table 4): :func:`probe_embeddings` of the model
    of ``run`` (:class:`bertology.notebook.Run`), of its random-init control
    (:func:`bertology.models.random_init_control`, seeded with ``run.seed``) and of the values
    themselves over ``[0, max(ranges)]``, probed by :func:`run_probes` with the seeds ``run.seed`` ..
    ``run.seed + n_seeds - 1``. Records nothing; the tables are left to the caller."""
    from .models import random_init_control

    control = random_init_control(run.loaded, run.seed)
    embeddings = probe_embeddings(run.loaded, control, max(ranges), layer, pool, encode, batch_size,
                                  cache_dir=run.cache_dir, control_seed=run.seed)
    del control
    runs = run_probes(embeddings, ranges=ranges, seeds=range(run.seed, run.seed + n_seeds), cfg=cfg, progress=progress)
    return ProbeStudy(embeddings, runs, summarize_probes(runs))


@dataclass
class NumerSense:
    """:func:`numersense_study`: the items and where they came from, the in-sample
    :func:`majority_baseline` and the :func:`numersense_tables` (``ranked`` items, ``metrics``)."""

    items: pd.DataFrame
    source: str
    majority: dict
    ranked: pd.DataFrame
    metrics: pd.DataFrame


def numersense_study(run, readout_layer: int = -1, fit: bool = True, items: tuple[pd.DataFrame, str] | None = None
                     ) -> NumerSense:
    """Notebook 06, section 3: NumerSense (Lin et al. 2020; ``items``: ``(items, source)`` as
    :func:`load_numersense` gives them, loaded when None) answered by the run's own MLM head, else a
    fitted readout on ``readout_layer`` (``run.scorer("auto")``; ``fit=False``: only when one is
    shipped or cached), and by the random-init control. Records on ``run``
    (:class:`bertology.notebook.Run`) the note when the shipped fallback items stand in,
    ``numersense_source``, the scorers' sources and ``numersense_majority_in_sample``; the tables are
    left to the caller."""
    items, source = load_numersense() if items is None else items
    if source == NUMERSENSE_FALLBACK:
        run.note(f"NumerSense is not available here; scored {len(items)} numeric cloze items written for bertology instead.")
    run.value("numersense_source", source)
    main = run.scorer("auto", readout_layer, use="NumerSense answers", paper="Lin et al. (2020)", fit=fit)
    scorers = [s for s in (main, run.scorer("control")) if s is not None]
    ranked, metrics = numersense_tables(scorers, items)
    majority = majority_baseline(items)
    run.value("numersense_majority_in_sample", majority)
    return NumerSense(items, source, majority, ranked, metrics)


def data_text(tokenize_max: int, numersense_source: str) -> str:
    """The report's data line of notebook 06."""
    return f"integers 0-{tokenize_max} and decimals 0.00-9.99 (generated); {numersense_source}"
