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

Numbers are embedded one at a time as ``[CLS] number [SEP]`` (:func:`embed_numbers`): the state
of one layer (``layer``, default the last) at the number's last word piece (``pool="last"``,
as Wallace et al.'s AllenNLP BERT embedder did) or the mean over its pieces.
Everything returns tidy long-format pandas tables; nothing here plots.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

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
WALLACE_SOURCE = ("Wallace, Wang, Li, Singh & Gardner (2019), Do NLP Models Know Numbers? Probing Numeracy "
                  "in Embeddings, EMNLP, arXiv:1909.07940")


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


class _Collect:
    """Reducer keeping one layer's state of the single word of each input."""

    def __init__(self, n: int, layer: int):
        self.layer, self.out = layer, [None] * n

    def update(self, item) -> None:
        units = item.encoding.word_units
        if len(units) != 1:
            raise ValueError(f"input {item.index} is not one number ({item.encoding.words})")
        self.out[item.index] = item.hidden[self.layer, units[0]]

    def result(self) -> np.ndarray:
        return np.stack(self.out).astype(np.float32)


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

    Returns ``[len(numbers), hidden_size]`` float32. With ``cache_dir`` the matrix is stored as
    safetensors keyed by model, revision, layer, pool and the number strings.
    """
    from .extract import extract

    if pool not in ("last", "first", "mean"):
        raise ValueError(f"pool must be 'last', 'first' or 'mean', not {pool!r}")
    numbers = [str(s) for s in numbers]
    if not numbers:
        raise ValueError("no numbers to embed")
    bad = [s for s in numbers if not s.strip() or len(s.split()) != 1]
    if bad:
        raise ValueError(f"each number must be one whitespace-free string; bad: {bad[:3]}")
    li = resolve_layer(loaded, layer)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(json.dumps(["numeracy-v1", loaded.info.name, loaded.info.revision, li, pool,
                                       numbers]).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"numbers-{h}.safetensors"
        if path.exists():
            from safetensors.numpy import load_file

            try:
                return load_file(path)["embeddings"]
            except Exception:  # noqa: BLE001 - a broken cache file is recomputed
                log.warning("number embedding cache %s unreadable; recomputing", path)
    col = _Collect(len(numbers), li)
    extract(loaded, [[s] for s in numbers], col, attention=False, hidden_states=True, pool=pool,
            batch_size=batch_size, progress=progress, desc="embed numbers")
    emb = col.result()
    if path is not None:
        from safetensors.numpy import save_file

        from .io import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"embeddings": emb}, tmp)
        atomic_write_bytes(path, tmp.read_bytes())
        tmp.unlink(missing_ok=True)
    return emb


def value_embedding(values: Sequence[float]) -> np.ndarray:
    """The sanity row: a one-dimensional embedding that *is* the number's value. Any working
    probe must solve the tasks on it (Wallace et al. 2019 list a "value embedding" too)."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


# ----------------------------------------------------------------------------- probes


@dataclass
class ProbeConfig:
    """Sizes and optimisation of the probes. Wallace et al. (2019) use 100-unit hidden layers,
    SGD and up to 1000 epochs over 100,000 lists/pairs; we use Adam with a cosine schedule for a
    fixed number of steps and a 50-unit BiLSTM, so that the whole grid runs in minutes on a CPU."""

    hidden: int = 100  # MLP hidden units (decoding, addition)
    lstm_hidden: int = 50  # BiLSTM units per direction (list maximum)
    steps: int = 400  # optimisation steps of the MLP probes
    max_steps: int = 300  # optimisation steps of the list-maximum probe
    batch_size: int = 128
    lr: float = 3e-3
    n_train_lists: int = 5000  # list maximum and addition: training examples drawn from training numbers
    n_test_lists: int = 1000
    list_length: int = 5

    def __post_init__(self):
        for k in ("hidden", "lstm_hidden", "steps", "max_steps", "batch_size", "n_train_lists", "n_test_lists"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"ProbeConfig.{k} must be a positive integer, got {v!r}")
        if self.list_length < 2:
            raise ValueError(f"ProbeConfig.list_length must be at least 2, got {self.list_length}")
        if not self.lr > 0:
            raise ValueError(f"ProbeConfig.lr must be positive, got {self.lr}")


def interpolation_split(lo: int, hi: int, seed: int = 0, train_share: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Wallace et al. (2019, §3.1) interpolation: shuffle the integers of ``[lo, hi]``, the first
    80% train the probe, the rest test it. Returns (train, test) value arrays."""
    if hi - lo < 9:
        raise ValueError(f"range [{lo}, {hi}] is too small to split into train and test numbers")
    values = np.arange(lo, hi + 1)
    np.random.default_rng(seed).shuffle(values)
    k = int(train_share * len(values))
    return values[:k], values[k:]


def make_max_lists(numbers: np.ndarray, n_lists: int, length: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ``length`` distinct numbers and the position of their maximum.

    As in Wallace et al. (2019, appendix) half the lists draw the others uniformly below the
    maximum, half draw them close below it (Gaussian over ranks, sd 5 ranks or 1% of the numbers),
    so that counting digits is not enough. Returns ``(lists [n, length], argmax [n])``.
    """
    nums = np.sort(np.unique(numbers))
    if len(nums) < 2 * length:
        raise ValueError(f"need at least {2 * length} distinct numbers for lists of {length}, got {len(nums)}")
    rng = np.random.default_rng(seed)
    sd = max(5.0, 0.01 * len(nums))
    lists = np.empty((n_lists, length), dtype=nums.dtype)
    for r in range(n_lists):
        top = int(rng.integers(length, len(nums)))
        if rng.random() < 0.5:
            others = rng.choice(top, size=length - 1, replace=False)
        else:
            chosen: set[int] = set()
            while len(chosen) < length - 1:
                k = top - 1 - int(abs(rng.normal(0.0, sd)))
                if k < 0:
                    k = int(rng.integers(0, top))
                chosen.add(k)
            others = np.fromiter(chosen, dtype=np.int64)
        row = np.concatenate([[top], others])
        rng.shuffle(row)
        lists[r] = nums[row]
    return lists, lists.argmax(1)


def make_pairs(numbers: np.ndarray, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Random pairs of two different numbers (Wallace et al. 2019, addition task): ``[n, 2]``."""
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


def _one_thread(fn):
    """Run a probe on one CPU thread: the probes are tiny, and with several threads (worse on a
    busy machine) thread synchronisation costs many times the arithmetic. Results do not change."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return wrapper


def _standardizer(x_train: np.ndarray):
    mu = x_train.mean(0)
    sd = x_train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return lambda x: ((x - mu) / sd).astype(np.float32)


def _mlp(d_in: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


class _MaxPointer(torch.nn.Module):
    """BiLSTM over the list's embeddings, a linear score per position, softmax over positions.

    The BiLSTM's input weights are factored through a ``rank``-dimensional linear layer (a rank
    constraint on them, no nonlinearity added), which makes training several times cheaper on CPU.
    """

    def __init__(self, d_in: int, hidden: int, rank: int = 64):
        super().__init__()
        self.proj = torch.nn.Linear(d_in, rank)
        self.lstm = torch.nn.LSTM(self.proj.out_features, hidden, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(2 * hidden, 1)

    def forward(self, x):
        h, _ = self.lstm(self.proj(x))
        return self.out(h).squeeze(-1)


def _train(model, x: torch.Tensor, y: torch.Tensor, loss_fn, cfg: ProbeConfig, gen: torch.Generator,
           steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    n = len(x)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
    model.eval()


def _lookup(emb: np.ndarray, values: np.ndarray, lo: int) -> np.ndarray:
    return emb[np.asarray(values) - lo]


def _check_emb(emb: np.ndarray, lo: int, hi: int) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < hi - lo + 1:
        raise ValueError(f"embeddings must be a matrix with one row per integer of [{lo}, {hi}] "
                         f"({hi - lo + 1} rows), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return emb


@_one_thread
def probe_decoding(emb: np.ndarray, lo: int, hi: int, seed: int = 0, cfg: ProbeConfig | None = None) -> dict:
    """Wallace et al. (2019, §3.1, Table 4 "Decoding"): an MLP (two hidden ReLU layers) regresses
    a number's value from its embedding (row ``v - lo`` of ``emb``); trained on the interpolation
    split's training numbers, RMSE on the held-out ones. Targets are scaled to [-1, 1] for training
    and the RMSE is in the original units. Returns ``{"rmse", "n_train", "n_test", "test", "pred"}``."""
    cfg = cfg or ProbeConfig()
    emb = _check_emb(emb, lo, hi)
    train, test = interpolation_split(lo, hi, seed)
    std = _standardizer(_lookup(emb, train, lo))
    center, scale = (lo + hi) / 2, max((hi - lo) / 2, 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = _mlp(emb.shape[1], cfg.hidden)
        x = torch.from_numpy(std(_lookup(emb, train, lo)))
        y = torch.from_numpy(((train - center) / scale).astype(np.float32))
        _train(model, x, y, lambda p, t: torch.nn.functional.mse_loss(p.squeeze(-1), t), cfg, gen, cfg.steps)
        with torch.inference_mode():
            pred = model(torch.from_numpy(std(_lookup(emb, test, lo)))).squeeze(-1).numpy() * scale + center
    rmse = float(np.sqrt(np.mean((pred - test) ** 2)))
    return {"rmse": rmse, "n_train": len(train), "n_test": len(test), "test": test, "pred": pred}


@_one_thread
def probe_addition(emb: np.ndarray, lo: int, hi: int, seed: int = 0, cfg: ProbeConfig | None = None) -> dict:
    """Wallace et al. (2019, §3.1, Table 4 "Addition"): an MLP on the concatenated embeddings of
    two numbers regresses their sum; pairs drawn from the training numbers train it, pairs of
    held-out numbers test it (RMSE in original units). Returns ``{"rmse", "n_train", "n_test"}``."""
    cfg = cfg or ProbeConfig()
    emb = _check_emb(emb, lo, hi)
    train, test = interpolation_split(lo, hi, seed)
    ptrain = make_pairs(train, cfg.n_train_lists, seed)
    ptest = make_pairs(test, cfg.n_test_lists, seed + 1)
    std = _standardizer(_lookup(emb, train, lo))

    def feats(p):
        return np.concatenate([std(_lookup(emb, p[:, 0], lo)), std(_lookup(emb, p[:, 1], lo))], 1)

    center, scale = float(lo + hi), max(float(hi - lo), 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = _mlp(2 * emb.shape[1], cfg.hidden)
        x = torch.from_numpy(feats(ptrain))
        y = torch.from_numpy(((ptrain.sum(1) - center) / scale).astype(np.float32))
        _train(model, x, y, lambda p, t: torch.nn.functional.mse_loss(p.squeeze(-1), t), cfg, gen, cfg.steps)
        with torch.inference_mode():
            pred = model(torch.from_numpy(feats(ptest))).squeeze(-1).numpy() * scale + center
    rmse = float(np.sqrt(np.mean((pred - ptest.sum(1)) ** 2)))
    return {"rmse": rmse, "n_train": len(ptrain), "n_test": len(ptest)}


@_one_thread
def probe_list_max(emb: np.ndarray, lo: int, hi: int, seed: int = 0, cfg: ProbeConfig | None = None) -> dict:
    """Wallace et al. (2019, §3.1, Table 4 "List Maximum"): a BiLSTM reads the embeddings of a
    list of five numbers and a softmax over positions points at the largest; lists of training
    numbers train it, lists of held-out numbers test it. Returns ``{"accuracy", "n_train", "n_test"}``
    (chance is 1/5)."""
    cfg = cfg or ProbeConfig()
    emb = _check_emb(emb, lo, hi)
    train, test = interpolation_split(lo, hi, seed)
    ltrain, ytrain = make_max_lists(train, cfg.n_train_lists, cfg.list_length, seed)
    ltest, ytest = make_max_lists(test, cfg.n_test_lists, cfg.list_length, seed + 1)
    std = _standardizer(_lookup(emb, train, lo))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = _MaxPointer(emb.shape[1], cfg.lstm_hidden)
        x = torch.from_numpy(std(_lookup(emb, ltrain, lo)))
        y = torch.from_numpy(ytrain.astype(np.int64))
        _train(model, x, y, torch.nn.functional.cross_entropy, cfg, gen, cfg.max_steps)
        with torch.inference_mode():
            pred = model(torch.from_numpy(std(_lookup(emb, ltest, lo)))).argmax(1).numpy()
    return {"accuracy": float((pred == ytest).mean()), "n_train": len(ltrain), "n_test": len(ltest)}


PROBES: dict[str, Callable[..., dict]] = {"list_max": probe_list_max, "decoding": probe_decoding,
                                          "addition": probe_addition}


def run_probes(embeddings: Mapping[str, tuple[np.ndarray, str]], ranges: Sequence[int] = (99, 999, 9999),
               tasks: Sequence[str] = tuple(TASKS), seeds: Sequence[int] = (0, 1, 2), lo: int = 0,
               cfg: ProbeConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Every probe on every embedding, range and seed (Wallace et al. 2019, Table 4).

    ``embeddings``: name -> (matrix with row ``v - lo`` for each integer ``v`` of ``[lo, max(ranges)]``,
    human-readable label saying where it came from). Returns the long table
    ``[task, metric, range_max, embedding, label, seed, value, n_train, n_test]``.
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
                     "seed": int(s), "value": res[metric], "n_train": res["n_train"], "n_test": res["n_test"]})
    return pd.DataFrame(rows)


def summarize_probes(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1; 0 for one seed) and number of seeds per
    (task, metric, range, embedding): ``[task, metric, range_max, embedding, label, mean, std, n_seeds]``."""
    g = df.groupby(["task", "metric", "range_max", "embedding", "label"], sort=False)["value"]
    out = g.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, n_seeds="count")
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


def readout_ready(loaded, layer: int) -> bool:
    """Whether a fitted readout for ``layer`` is already shipped or cached (so using it costs no
    fitting). False when that cannot be told."""
    try:
        from .readout import FitSettings, cache_path, shipped_readouts

        shipped = shipped_readouts(loaded)
        if shipped is not None and str(layer) in shipped[1].get("layers", {}):
            return True
        return cache_path(loaded, layer, FitSettings()).exists()
    except Exception:  # noqa: BLE001 - the readout module's internals are not ours to rely on
        return False


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
