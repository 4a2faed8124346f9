"""Semantic roles, commonsense inference and negation by cloze: Ettinger (2020) and our own
selectional-preference suite.

Reproduces the diagnostics of Ettinger (2020), *What BERT is not* (TACL), that the Primer in
BERTology (Rogers et al. 2020, §3.2 "Semantic knowledge") summarises:

- **CPRAG-102** (commonsense and pragmatic inference, Federmeier & Kutas 1999): two-sentence
  contexts; the expected word against a within-category and a between-category completion
  (and her perturbations: first sentence shuffled, second sentence truncated to its last two
  words, both; ``run_diagnostics_bert.py``).
- **ROLE-88** (event knowledge and semantic roles, Chow et al. 2016): "which customer the
  waitress had [MASK]" against the role-reversed "which waitress the customer had [MASK]"
  (and, in her experiment code, the same with the object and/or subject noun removed).
- **NEG-136** (category membership and negation, Fischler et al. 1983 SIMP; Nieuwland &
  Kuperberg 2008 NAT): "A robin is a [MASK]" / "A robin is not a [MASK]".

Ettinger's two measures, as defined in her released code (read to understand, not
copied): **accuracy@k** — the share of contexts whose expected word (any of them, when
several) is among the model's top-k predictions over the whole vocabulary; **sensitivity** —
the share of comparisons in which the good completion gets a higher probability than the bad
one (CPRAG: expected above both other completions; ROLE: the target in its proper context above
the same target in the role-reversed one; NEG: the true completion above the false one, for
affirmative and negated contexts separately). A thresholded variant also asks the difference
in probability to exceed 0.01.

Defaults follow her released code (``aetting/lm-diagnostics``: ``access_model.py``,
``proc_datasets.py``, ``run_diagnostics_bert.py``, ``prediction_accuracy_tests.py``,
``sensitivity_tests.py``), which was read for the definitions:

- the model input is ``[CLS] <context> [MASK] . [SEP]`` — her ``prep_input`` appends a full
  stop after the mask (:func:`ettinger_input`, option ``final_period``);
- a target that is not one vocabulary item has no probability there (NaN), and every comparison
  involving it, like every accuracy test of it, counts as **wrong** and stays in the denominator
  (option ``oov="drop"`` leaves such items out instead);
- top-k predictions and ranks are over the whole vocabulary, special tokens included (option
  ``exclude_special=True`` ranks among non-special tokens only);
- CPRAG shuffles are drawn three times (she reports mean and standard deviation over three
  draws); the shuffled and shuffled+truncated contexts of a draw share one shuffle;
- ROLE perturbations remove the object noun ("which one the waitress had") or the subject noun
  ("which customer the other had") or both, as her ``process_rr`` does.

The deviations that remain are declared in :mod:`bertology.fidelity` (study ``"ettinger"``).

Everything here works on tidy tables: loaders give the items, :func:`ettinger_queries` turns
them into one row per (context, target) probability needed, :func:`score_queries` fills those
from a cloze scorer (``bertology.cloze``), and the metric functions reduce the scored table.
The metric functions take plain DataFrames, so tests check them on hand-made predictions.

The **selectional-preference suite** (``data/stimuli/selectional_preferences.tsv``, written for
this package) asks, in the spirit of "tip a waiter > tip a chef > tip a robin" (Primer §3.2),
whether a model ranks a typical object of a verb above an atypical-but-possible one and that
above an implausible one.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .fidelity import declare, option_differs

MASK = "[MASK]"
ETTINGER = "ettinger-lm-diagnostics"
_FILES = {
    "CPRAG": "datasets/CPRAG-102/CPRAG-102.tsv",
    "ROLE": "datasets/ROLE-88/ROLE-88.tsv",
    "NEG-SIMP": "datasets/NEG-136/NEG-136-SIMP.tsv",
    "NEG-NAT": "datasets/NEG-136/NEG-136-NAT.tsv",
}
STIMULI = Path(__file__).with_name("data") / "stimuli"
#: Our own small stand-ins used when the Ettinger files cannot be had (same formats).
_OWN = {"CPRAG": "cprag_like.tsv", "NEG-SIMP": "neg_like.tsv"}
SUITES = ("CPRAG", "ROLE", "NEG-SIMP", "NEG-NAT")
PERTURBATIONS = ("original", "shuffled", "truncated", "shuffled+truncated")
#: ROLE perturbations of Ettinger's experiment code (``process_rr`` flags gen_obj / gen_subj).
ROLE_PERTURBATIONS = ("original", "object removed", "subject removed", "both removed")
THRESHOLD = 0.01  # Ettinger's probability-difference threshold
SHUFFLE_DRAWS = 3  # Ettinger's run_aux_tests: three shuffles, mean and standard deviation
OOV = ("wrong", "drop")
_CODE = "aetting/lm-diagnostics"

STUDIES = ("ettinger",)
declare("ettinger", "shuffle_seeds",
        "CPRAG shuffles are {shuffle_draws} seeded draws (seeds derived from the run's seed) instead of unseeded "
        "random.shuffle draws; mean and population standard deviation over draws as in the authors' code.",
        reference=f"{_CODE} run_diagnostics_bert.py (process_fk, run_aux_tests)")
declare("ettinger", "within_comparison",
        "An extra CPRAG comparison 'expected vs within' (expected above the within-category completion alone) is "
        "reported beside the authors' 'expected vs both'; it is ours.",
        reference=f"{_CODE} sensitivity_tests.py (cprag_sensitivity_test)")
declare("ettinger", "tokenizer",
        "Tokenization by the model's Hugging Face tokenizer (transformers 5.x) instead of pytorch-pretrained-bert 0.6.2's "
        "BertTokenizer; same [CLS] context [MASK] . [SEP] text, no segment or padding differences for one sentence.",
        reference=f"{_CODE} access_model.py (prep_input), versions.txt")
declare("ettinger", "final_period",
        "Input without the full stop after [MASK] ('[CLS] context [MASK] [SEP]'); the authors append ' .'.",
        kind="option", when=option_differs("final_period", True), reference=f"{_CODE} access_model.py (prep_input)")
declare("ettinger", "oov",
        "Targets that are not a single vocabulary item are dropped from accuracy and sensitivity (oov='drop'); the "
        "authors give them no probability (NaN), so every test of them fails and stays in the denominator.",
        kind="option", when=option_differs("oov", "wrong"),
        reference=f"{_CODE} access_model.py (get_probabilities), sensitivity_tests.py, prediction_accuracy_tests.py")
declare("ettinger", "exclude_special",
        "Top-k predictions and ranks among non-special tokens only; the authors rank the whole vocabulary, "
        "[CLS]/[SEP]/[MASK]/[UNK] included.",
        kind="option", when=option_differs("exclude_special", False), reference=f"{_CODE} access_model.py (get_predictions)")


class StimulusError(ValueError):
    """A stimulus file or table is malformed; the message names the file/row and the problem."""


# ----------------------------------------------------------------------------- loading


def _read_tsv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    except Exception as exc:  # noqa: BLE001 - pandas raises many parser errors
        raise StimulusError(f"{path}: cannot read as TSV ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StimulusError(f"{path}: missing column(s) {missing}; it has {list(df.columns)}")
    df = df[list(columns)].copy()
    for c in columns:
        df[c] = df[c].str.strip()
    empty = df[(df[list(columns)] == "").any(axis=1)]
    if len(empty):
        raise StimulusError(f"{path}: row {int(empty.index[0]) + 2} has an empty field")
    return df


_COLUMNS = {
    "CPRAG": ("item", "context_s1", "context_s2", "expected", "within_category", "between_category", "constraint"),
    "ROLE": ("item", "context", "expected", "exp_cloze", "target", "tgt_cloze"),
    "NEG-SIMP": ("item", "context_aff", "context_neg", "target_aff", "target_neg"),
    "NEG-NAT": ("item", "context_aff", "context_neg", "target_aff", "target_neg", "licensing"),
}


def load_suite(suite: str, path: str | Path | None = None) -> pd.DataFrame:
    """One Ettinger (2020) suite as a table with the upstream columns (``_COLUMNS[suite]``).

    ``path`` defaults to the registered file (``BERTOLOGY_DATA`` mirror, cache or download;
    raises ``DataUnavailableError`` when none works). ROLE items ``61-a``/``61-b`` get the
    columns ``pair`` (61) and ``condition`` (a: canonical roles, b: reversed).
    """
    if suite not in _COLUMNS:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(_COLUMNS)}")
    if path is None:
        from .data import data_path

        path = data_path(ETTINGER, _FILES[suite])
    df = _read_tsv(Path(path), _COLUMNS[suite])
    if suite == "ROLE":
        parts = df["item"].str.extract(r"^(?P<pair>[^-]+)-(?P<condition>[ab])$")
        if parts.isna().any().any():
            bad = df["item"][parts.isna().any(axis=1)].iloc[0]
            raise StimulusError(f"{path}: ROLE item id {bad!r} is not of the form '<pair>-a' or '<pair>-b'")
        df = pd.concat([df, parts], axis=1)
        for c in ("exp_cloze", "tgt_cloze"):
            df[c] = pd.to_numeric(df[c], errors="raise")
    return df


def load_own_suite(suite: str) -> pd.DataFrame:
    """Our own small CPRAG-like / NEG-SIMP-like items (written for bertology, same columns)."""
    if suite not in _OWN:
        raise ValueError(f"no shipped stand-in for {suite!r}; shipped: {', '.join(_OWN)}")
    return load_suite(suite, STIMULI / _OWN[suite])


def load_ettinger(suites: Sequence[str] = SUITES, fallback: bool = True) -> tuple[dict[str, pd.DataFrame], str]:
    """All suites from the data mirror; with ``fallback`` our shipped stand-ins when unavailable.

    Returns ``(suites, origin)`` where origin is ``"ettinger"`` or ``"shipped"``.
    """
    from .data import DataUnavailableError

    try:
        return {s: load_suite(s) for s in suites}, "ettinger"
    except DataUnavailableError:
        if not fallback:
            raise
    return {s: load_own_suite(s) for s in suites if s in _OWN}, "shipped"


# ----------------------------------------------------------------------------- queries


def ettinger_input(context: str, final_period: bool = True) -> str:
    """The text Ettinger's code feeds BERT for a context (the tokenizer adds [CLS] and [SEP]).

    Her ``prep_input`` splits the masked context on whitespace and appends a full stop when the
    last token is not one; as every context ends in the mask, the input is always
    ``"<context> [MASK] ."``. ``final_period=False`` gives our old ``"<context> [MASK]"``.
    """
    words = context.split() + [MASK]
    if final_period and words[-1] != ".":
        words.append(".")
    return " ".join(words)


def _article(noun: str) -> str:
    return "an" if re.match(r"[aeiou]", noun) else "a"


def _shuffled_first(s1: str, rng: random.Random) -> str:
    words = s1.replace(".", "").split()
    rng.shuffle(words)
    return " ".join(words) + "."


def perturb_cprag(s1: str, s2: str, how: str, rng: random.Random | None = None, shuffled: str | None = None) -> str:
    """Ettinger's perturbations of a CPRAG context (the [MASK] is appended by the caller).

    ``shuffled``: words of the first sentence in random order (its full stops dropped, one put
    back at the end); ``truncated``: the second sentence cut to its last two words;
    ``shuffled+truncated``: both. Pass ``shuffled`` (a first sentence shuffled already) to reuse
    one shuffle for both shuffled variants, as her ``process_fk`` does; else it is drawn from ``rng``.
    """
    if how not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {how!r}; use one of {PERTURBATIONS}")
    first, second = s1, s2
    if "shuffled" in how:
        if shuffled is None:
            if rng is None:
                raise ValueError("a shuffled perturbation needs `rng` or `shuffled`")
            shuffled = _shuffled_first(s1, rng)
        first = shuffled
    if "truncated" in how:
        second = " ".join(s2.split()[-2:])
    return f"{first} {second}"


_ROLE_FRAME = re.compile(r"^(?P<pre>.*\bwhich) (?P<obj>.+?) the (?P<subj>.+) had$")


def perturb_role(context: str, how: str) -> str:
    """Ettinger's ROLE argument removals (experiment code, ``process_rr``): in "... which
    <object> the <subject> had", ``object removed`` puts *one* for the object noun,
    ``subject removed`` puts *other* for the subject noun, ``both removed`` does both."""
    if how not in ROLE_PERTURBATIONS:
        raise ValueError(f"unknown ROLE perturbation {how!r}; use one of {ROLE_PERTURBATIONS}")
    text = " ".join(context.split())
    if how == "original":
        return text
    m = _ROLE_FRAME.match(text)
    if not m:
        raise StimulusError(f"ROLE context {context!r} is not of the form '... which <object> the <subject> had'")
    obj = "one" if how in ("object removed", "both removed") else m["obj"]
    subj = "other" if how in ("subject removed", "both removed") else m["subj"]
    return f"{m['pre']} {obj} the {subj} had"


def _neg_context(ctx: str, target: str, suite: str) -> str:
    # SIMP: the "(a|an)" placeholder is removed and the article of the completion put before the mask
    if suite == "NEG-SIMP" or "(a|an)" in ctx:
        return " ".join(re.sub(r"\(a\|an\)", " ", ctx).split() + [_article(target)])
    return ctx


def ettinger_queries(suites: dict[str, pd.DataFrame], perturbations: Sequence[str] = PERTURBATIONS,
                     seed: int = 0, *, final_period: bool = True, shuffle_draws: int = SHUFFLE_DRAWS,
                     role_perturbations: Sequence[str] = ("original",)) -> pd.DataFrame:
    """One row per (context, target) probability Ettinger's measures need.

    Columns: ``suite, variant, draw, item, condition, context, target, expected`` (``|``-joined
    acceptable words for accuracy@k), ``accuracy_row`` (True on the rows that count for accuracy:
    CPRAG one per context, ROLE every row, NEG the affirmative context with its true completion).
    Conditions: CPRAG ``exp/wc/bc``; ROLE ``a/b``; NEG ``TA, FA`` (affirmative context with
    true/false target) and ``TN, FN`` (negated context with true/false target).
    ``context`` is the model's input text (:func:`ettinger_input`, with ``final_period``).
    CPRAG ``variant`` is one of ``perturbations``; the shuffled ones come in ``shuffle_draws``
    draws (``draw`` 0, 1, ...; draw ``d`` uses ``random.Random(seed * 1000 + d)``, and its shuffled
    and shuffled+truncated contexts share one shuffle per item); other rows have ``draw`` 0.
    ROLE ``variant`` is one of ``role_perturbations`` (see :func:`perturb_role`); NEG ``original``.
    """
    if shuffle_draws < 1:
        raise ValueError(f"shuffle_draws must be positive, got {shuffle_draws}")
    rows = []
    inp = lambda c: ettinger_input(c, final_period)  # noqa: E731
    for suite, df in suites.items():
        if suite == "CPRAG":
            for how in perturbations:
                if how not in PERTURBATIONS:
                    raise ValueError(f"unknown perturbation {how!r}; use one of {PERTURBATIONS}")
            rngs = [random.Random(seed * 1000 + d) for d in range(shuffle_draws)]
            shuffles = [{str(r.item): _shuffled_first(r.context_s1, rng) for r in df.itertuples(index=False)}
                        for rng in rngs]
            for how in perturbations:
                for draw in range(shuffle_draws if "shuffled" in how else 1):
                    for r in df.itertuples(index=False):
                        ctx = inp(perturb_cprag(r.context_s1, r.context_s2, how, shuffled=shuffles[draw][str(r.item)]))
                        for cond, tgt in (("exp", r.expected), ("wc", r.within_category), ("bc", r.between_category)):
                            rows.append(dict(suite=suite, variant=how, draw=draw, item=str(r.item), condition=cond,
                                             context=ctx, target=tgt, expected=r.expected, accuracy_row=cond == "exp",
                                             constraint=r.constraint))
        elif suite == "ROLE":
            for how in role_perturbations:
                for r in df.itertuples(index=False):
                    expected = "|".join(e.split()[0] for e in r.expected.split("|"))
                    rows.append(dict(suite=suite, variant=how, draw=0, item=str(r.pair), condition=r.condition,
                                     context=inp(perturb_role(r.context, how)), target=r.target.split()[0],
                                     expected=expected, accuracy_row=True, tgt_cloze=r.tgt_cloze))
        elif suite in ("NEG-SIMP", "NEG-NAT"):
            for r in df.itertuples(index=False):
                for cond, ctx, tgt, true in (("TA", r.context_aff, r.target_aff, r.target_aff),
                                             ("FA", r.context_aff, r.target_neg, r.target_aff),
                                             ("TN", r.context_neg, r.target_neg, r.target_neg),
                                             ("FN", r.context_neg, r.target_aff, r.target_neg)):
                    rows.append(dict(suite=suite, variant="original", draw=0, item=str(r.item), condition=cond,
                                     context=inp(_neg_context(ctx, tgt, suite)), target=tgt, expected=true,
                                     accuracy_row=cond == "TA",
                                     licensing=getattr(r, "licensing", None)))
        else:
            raise ValueError(f"unknown suite {suite!r}")
    if not rows:
        raise ValueError("no items: every suite given is empty")
    return pd.DataFrame(rows)


def context_cloze(scorer, contexts: Sequence[str], words: Sequence[Sequence[str]], *, k: int = 0,
                  vocab: Sequence[str] | None = None, batch_size: int = 32, progress: bool = True,
                  special_tokens: bool = False):
    """Like ``bertology.cloze.cloze(..., multi_piece="skip")`` but with **one forward pass per
    context**, however many single-piece words are scored in it.

    The engine runs one masked sequence per (context, target); for single-piece targets those
    sequences are identical, so Ettinger's three completions per context, or LAMA's target plus
    top-k, would cost three or two passes. Here each distinct context runs once and every word is
    read off the same log-softmax. Returns a ``ClozeResult`` with the engine's columns and meaning
    (rank among ``vocab`` or all non-special tokens, 1 = best; multi-piece words NaN and counted in
    ``n_skipped``); tests check it against ``cloze.cloze`` number for number.
    ``special_tokens=True`` (with ``vocab=None``) ranks and takes the top-k over the *whole*
    vocabulary, special tokens included, as Ettinger's ``get_predictions`` does.
    """
    import torch

    from . import cloze
    from .extract import batch_overhead, padded_batches

    contexts = list(contexts)
    if len(words) != len(contexts):
        raise ValueError(f"words must hold one list per context ({len(contexts)} contexts, got {len(words)})")
    tok = scorer.tokenizer
    special = set(tok.all_special_ids)
    if vocab is None:
        allowed = torch.as_tensor([i for i in range(len(tok)) if special_tokens or i not in special])
        dropped = []
    else:
        ids, dropped = [], []
        for w in vocab:
            p = cloze.word_pieces(tok, w)
            (ids if len(p) == 1 else dropped).append(p[0] if len(p) == 1 else w)
        allowed = torch.as_tensor(sorted(set(ids)))
        if not len(allowed):
            raise ValueError("no word of `vocab` is a single word piece of this tokenizer")
    seqs, pos = [], []
    for i, c in enumerate(contexts):
        ids, where = cloze.encode_masked(scorer, c, f"context {i}")
        seqs.append(ids)
        pos.append(where)
    rows, targets_of = [], []
    for i, ws in enumerate(words):
        own = []
        for w in ws:
            if not isinstance(w, str) or not w.strip():
                raise ValueError(f"item {i}: words must be non-empty strings, got {w!r}")
            p = cloze.word_pieces(tok, w)
            rows.append({"item": i, "target": w, "n_pieces": len(p)})
            own.append(p[0] if len(p) == 1 else -1)
        targets_of.append(own)
    lp_all = np.full(len(rows), np.nan)
    rank_all = np.full(len(rows), np.nan)
    first_row = np.cumsum([0] + [len(w) for w in words])
    top_rows = []
    for batch, ids, mask in padded_batches(seqs, batch_size, 16384, progress=progress, desc="cloze",
                                         overhead=batch_overhead(scorer.device)):
        positions = torch.stack([torch.arange(len(batch)), torch.as_tensor([pos[i] for i in batch])], 1)
        out = scorer.log_probs(ids, mask, positions).cpu()
        sub = out[:, allowed]
        for b, i in enumerate(batch):
            for j, t in enumerate(targets_of[i]):
                if t >= 0:
                    v = out[b, t]
                    lp_all[first_row[i] + j] = float(v)
                    rank_all[first_row[i] + j] = float(1 + (sub[b] > v).sum())
        if k:
            kk = min(k, sub.shape[1])
            v, j = sub.topk(kk, dim=1)
            tokens = allowed[j]
            for b, i in enumerate(batch):
                names = tok.convert_ids_to_tokens(tokens[b].tolist())
                top_rows += [{"item": i, "rank": r + 1, "token": names[r], "logprob": float(v[b, r])} for r in range(kk)]
    tdf = pd.DataFrame(rows, columns=["item", "target", "n_pieces"])
    tdf["logprob"], tdf["prob"], tdf["rank"] = lp_all, np.exp(lp_all), rank_all
    top = pd.DataFrame(top_rows, columns=["item", "rank", "token", "logprob"]).sort_values(["item", "rank"],
                                                                                        ignore_index=True)
    return cloze.ClozeResult(tdf, top, int((tdf["n_pieces"] > 1).sum()), dropped, scorer.source, scorer.label)


def score_queries(scorer, queries: pd.DataFrame, batch_size: int = 32, k: int = 5,
                  exclude_special: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill each query row with cloze numbers from ``scorer`` (a ``bertology.cloze.Scorer``).

    Returns ``(scored, top)``. ``scored`` adds ``source`` (mlm/readout/control),
    ``logprob``/``prob``/``rank``/``n_pieces`` of the target and ``expected_rank`` (best rank
    among the expected words; rank is over the whole vocabulary, special tokens included as in
    Ettinger's code, or over non-special tokens with ``exclude_special``; 1 = top prediction).
    Multi-piece words get NaN: a word the tokenizer splits can never be a single top-k prediction,
    and Ettinger's probabilities are single-token (her ``convert_tokens_to_ids`` of such a word
    fails and she records NaN). ``top``: the top-``k`` predictions of each context
    (``source, context, rank, token, logprob``). Each distinct context is run once.
    """
    need = {"context", "target", "expected"}
    if not need <= set(queries.columns):
        raise ValueError(f"queries need columns {sorted(need)}; got {list(queries.columns)}")
    contexts = list(dict.fromkeys(queries["context"]))
    words: dict[str, list[str]] = {c: [] for c in contexts}
    for c, t, e in zip(queries["context"], queries["target"], queries["expected"]):
        for w in [t, *e.split("|")]:
            if w not in words[c]:
                words[c].append(w)
    res = context_cloze(scorer, contexts, [words[c] for c in contexts], k=k, batch_size=batch_size,
                        special_tokens=not exclude_special)
    t = res.targets.assign(context=[contexts[i] for i in res.targets["item"]])
    look = {(c, w): (lp, p, r, n) for c, w, lp, p, r, n in
            zip(t["context"], t["target"], t["logprob"], t["prob"], t["rank"], t["n_pieces"])}
    out = queries.copy()
    vals = [look[(c, w)] for c, w in zip(out["context"], out["target"])]
    out["logprob"] = [v[0] for v in vals]
    out["prob"] = [v[1] for v in vals]
    out["rank"] = [v[2] for v in vals]
    out["n_pieces"] = [int(v[3]) for v in vals]
    best = []
    for c, e in zip(out["context"], out["expected"]):
        r = [look[(c, w)][2] for w in e.split("|")]
        r = [x for x in r if not np.isnan(x)]
        best.append(min(r) if r else np.nan)
    out["expected_rank"] = best
    out.insert(0, "source", scorer.source)
    top = res.top.assign(context=[contexts[i] for i in res.top["item"]], source=scorer.source)
    return out, top[["source", "context", "rank", "token", "logprob"]]


# ----------------------------------------------------------------------------- metrics


def _check_oov(oov: str) -> None:
    if oov not in OOV:
        raise ValueError(f"oov must be one of {OOV}, got {oov!r}")


def accuracy_at_k(scored: pd.DataFrame, ks: Sequence[int] = (1, 5),
                  by: Sequence[str] = ("source", "suite", "variant", "draw"), oov: str = "wrong") -> pd.DataFrame:
    """Ettinger's accuracy@k: share of accuracy rows whose ``expected_rank <= k``.

    A NaN ``expected_rank`` (no expected word is a single vocabulary item) counts as a miss, as
    in her code (a predicted word piece never equals such a word); ``oov="drop"`` leaves those
    rows out instead. Long format: ``*by, k, accuracy, n, n_oov`` (``n_oov``: rows whose expected
    words are all out of vocabulary; inside ``n`` under ``"wrong"``, outside it under ``"drop"``).
    """
    _check_oov(oov)
    rows = scored[scored["accuracy_row"]] if "accuracy_row" in scored else scored
    by = [b for b in by if b in rows.columns]
    out = []
    for key, g in rows.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ranks = g["expected_rank"].to_numpy(dtype=float)
        n_oov = int(np.isnan(ranks).sum())
        if oov == "drop":
            ranks = ranks[~np.isnan(ranks)]
        for k in ks:
            hit = np.nan_to_num(ranks, nan=np.inf) <= k
            out.append({**dict(zip(by, key)), "k": int(k), "accuracy": float(hit.mean()) if len(ranks) else np.nan,
                        "n": int(len(ranks)), "n_oov": n_oov})
    return pd.DataFrame(out)


def sensitivity_pairs(scored: pd.DataFrame) -> pd.DataFrame:
    """The good-vs-bad comparisons of Ettinger's sensitivity tests, one row each.

    CPRAG: ``expected`` vs the better of within/between-category (good wins only if above both;
    her "EXP TOP"), and ``expected vs within`` alone. ROLE: target in the canonical (a) vs the
    role-reversed (b) context. NEG: ``affirmative`` (TA vs FA) and ``negated`` (TN vs FN).
    Columns: ``source, suite, variant, item, comparison, good_prob, bad_prob, good_logprob, bad_logprob``.
    """
    out = []
    keys = [c for c in ("source", "suite", "variant", "draw") if c in scored.columns]
    for key, g in scored.groupby(keys, sort=False):
        base = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        suite = base["suite"]
        for item, gi in g.groupby("item", sort=False):
            c = {r["condition"]: r for r in gi.to_dict("records")}
            pairs = []
            if suite == "CPRAG" and {"exp", "wc", "bc"} <= set(c):
                wc, bc = c["wc"], c["bc"]
                if np.isnan(wc["logprob"]) or np.isnan(bc["logprob"]):
                    worst = {"target": f'{wc["target"]}/{bc["target"]}', "prob": np.nan, "logprob": np.nan}
                else:
                    worst = wc if wc["logprob"] >= bc["logprob"] else bc
                pairs += [("expected vs both", c["exp"], worst), ("expected vs within", c["exp"], wc)]
            elif suite == "ROLE" and {"a", "b"} <= set(c):
                pairs.append(("canonical vs reversed", c["a"], c["b"]))
            elif suite.startswith("NEG") and {"TA", "FA", "TN", "FN"} <= set(c):
                pairs += [("affirmative", c["TA"], c["FA"]), ("negated", c["TN"], c["FN"])]
            group = {}
            first = next(iter(c.values()))
            if suite == "CPRAG" and isinstance(first.get("constraint"), str):
                group["group"] = f"constraint {first['constraint']}"
            elif suite == "NEG-NAT" and isinstance(first.get("licensing"), str):
                group["group"] = f"licensing {first['licensing']}"
            for comp, good, bad in pairs:
                out.append({**base, "item": item, "comparison": comp, **group,
                            "good": good["target"], "bad": bad["target"],
                            "good_prob": good["prob"], "bad_prob": bad["prob"],
                            "good_logprob": good["logprob"], "bad_logprob": bad["logprob"]})
    return pd.DataFrame(out)


def sensitivity_by_group(pairs: pd.DataFrame, threshold: float = THRESHOLD, oov: str = "wrong") -> pd.DataFrame:
    """Ettinger's breakdowns of sensitivity: CPRAG by item constraint (``constraint H`` / ``L``, her
    high- and low-constraint items) and NEG-NAT by licensing (``licensing Y``: natural negation,
    ``N``: less natural). Same columns as :func:`sensitivity` plus ``group``; other suites are absent."""
    if "group" not in pairs.columns:
        return pd.DataFrame(columns=["source", "suite", "variant", "draw", "comparison", "group", "sensitivity",
                                     "sensitivity_thresh", "n", "n_oov", "n_dropped"])
    g = pairs.dropna(subset=["group"])
    return sensitivity(g, threshold, by=("source", "suite", "variant", "draw", "comparison", "group"), oov=oov)


def sensitivity(pairs: pd.DataFrame, threshold: float = THRESHOLD,
                by: Sequence[str] = ("source", "suite", "variant", "draw", "comparison"),
                oov: str = "wrong") -> pd.DataFrame:
    """Share of comparisons where P(good) > P(bad), and where it is larger by more than ``threshold``.

    A pair with a NaN probability (a word that is not one vocabulary item) is a **loss**, as in
    Ettinger's code, where ``good > bad`` is false when either is NaN, and stays in ``n``;
    ``oov="drop"`` leaves such pairs out. ``n_oov`` counts them either way, ``n_dropped`` those left
    out. Long format: ``*by, sensitivity, sensitivity_thresh, n, n_oov, n_dropped``.
    """
    _check_oov(oov)
    by = [b for b in by if b in pairs.columns]
    out = []
    for key, g in pairs.groupby(by, sort=False):
        known = g[["good_logprob", "bad_logprob"]].notna().all(axis=1)
        ok = g[known] if oov == "drop" else g
        win = (ok["good_logprob"] > ok["bad_logprob"]).to_numpy()  # NaN compares False: a loss
        win_t = ((ok["good_prob"] - ok["bad_prob"]) > threshold).to_numpy() & win
        out.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                    "sensitivity": float(win.mean()) if len(ok) else np.nan,
                    "sensitivity_thresh": float(win_t.mean()) if len(ok) else np.nan,
                    "n": int(len(ok)), "n_oov": int((~known).sum()), "n_dropped": int(len(g) - len(ok))})
    return pd.DataFrame(out)


def ettinger_summary(accuracy: pd.DataFrame, sens: pd.DataFrame) -> pd.DataFrame:
    """One long table of every headline number: ``source, suite, variant, metric, value, sd, draws, n``.

    metric: ``accuracy@k``, ``sensitivity: <comparison>`` and ``sensitivity (>0.01): <comparison>``.
    Where a variant comes in several draws (shuffled CPRAG) ``value`` is the mean over draws and
    ``sd`` their population standard deviation (numpy's default, as in Ettinger's
    ``run_aux_tests``); single-draw rows have ``sd`` 0 and ``draws`` 1. ``n`` is per draw.
    """
    rows = []
    for r in accuracy.to_dict("records"):
        rows.append(dict(source=r["source"], suite=r["suite"], variant=r["variant"], draw=r.get("draw", 0),
                         metric=f"accuracy@{r['k']}", value=r["accuracy"], n=r["n"]))
    for r in sens.to_dict("records"):
        for metric, col in ((f"sensitivity: {r['comparison']}", "sensitivity"),
                            (f"sensitivity (>{THRESHOLD:g}): {r['comparison']}", "sensitivity_thresh")):
            rows.append(dict(source=r["source"], suite=r["suite"], variant=r["variant"], draw=r.get("draw", 0),
                             metric=metric, value=r[col], n=r["n"]))
    long = pd.DataFrame(rows, columns=["source", "suite", "variant", "draw", "metric", "value", "n"])
    keys = ["source", "suite", "variant", "metric"]
    out = (long.groupby(keys, sort=False)
               .agg(value=("value", "mean"), sd=("value", lambda v: float(np.std(v.to_numpy(dtype=float)))),
                    draws=("draw", "nunique"), n=("n", "first"))
               .reset_index())
    return out


# ----------------------------------------------------------------------------- selectional preferences

PLAUSIBILITY = ("typical", "atypical", "implausible")


def load_selectional_preferences(path: str | Path | None = None) -> pd.DataFrame:
    """Our selectional-preference suite: ``verb, context`` (with one [MASK] for the object) and
    ``typical, atypical, implausible`` objects (e.g. tipped the waiter / chef / robin)."""
    path = Path(path) if path is not None else STIMULI / "selectional_preferences.tsv"
    df = _read_tsv(path, ("verb", "context", "typical", "atypical", "implausible"))
    bad = df[df["context"].str.count(re.escape(MASK)) != 1]
    if len(bad):
        raise StimulusError(f"{path}: row {int(bad.index[0]) + 2} ({bad['verb'].iloc[0]!r}) must hold exactly one {MASK}")
    dup = df[df.duplicated(["context"])]
    if len(dup):
        raise StimulusError(f"{path}: context {dup['context'].iloc[0]!r} appears twice")
    return df.reset_index(drop=True)


def selectional_queries(items: pd.DataFrame) -> pd.DataFrame:
    """Long format for :func:`score_queries`: one row per (verb, object class)."""
    rows = []
    for i, r in items.iterrows():
        for cls in PLAUSIBILITY:
            rows.append(dict(suite="selectional", variant="original", item=r["verb"], condition=cls,
                             context=r["context"], target=r[cls], expected=r["typical"], accuracy_row=cls == "typical"))
    return pd.DataFrame(rows)


def rank_agreement(scored: pd.DataFrame) -> pd.DataFrame:
    """Per item: the model's order of the three objects against typical > atypical > implausible.

    Columns: ``source, item, rank_typical, rank_atypical, rank_implausible`` (1 = most probable
    of the three), ``kendall_tau`` (+1 same order, -1 reversed) and ``exact`` (order fully right).
    Items with a multi-piece object are dropped (counted by :func:`rank_agreement_summary`).
    """
    out = []
    keys = ["source"] if "source" in scored.columns else []
    for key, g in scored.groupby(keys + ["item"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        lp = g.set_index("condition")["logprob"].reindex(list(PLAUSIBILITY)).to_numpy(dtype=float)
        row = dict(zip(keys + ["item"], key))
        if np.isnan(lp).any():
            row.update(rank_typical=np.nan, rank_atypical=np.nan, rank_implausible=np.nan,
                       kendall_tau=np.nan, exact=np.nan)
        else:
            ranks = (-lp).argsort().argsort() + 1
            row.update({f"rank_{c}": int(r) for c, r in zip(PLAUSIBILITY, ranks)})
            concord = sum(np.sign(lp[i] - lp[j]) for i in range(3) for j in range(i + 1, 3))
            row["kendall_tau"] = float(concord / 3)
            row["exact"] = bool(list(ranks) == [1, 2, 3])
        out.append(row)
    return pd.DataFrame(out)


def rank_agreement_summary(agreement: pd.DataFrame) -> pd.DataFrame:
    """Pairwise preference rates and order agreement per source, long format
    ``source, metric, value, n, n_dropped``. Chance: 0.5 for each pair, 1/6 for exact order, 0 for tau."""
    rows = []
    for src, g in agreement.groupby("source", sort=False):
        ok = g.dropna(subset=["kendall_tau"])
        n, dropped = len(ok), len(g) - len(ok)
        metrics = {
            "typical > atypical": (ok["rank_typical"] < ok["rank_atypical"]).mean(),
            "atypical > implausible": (ok["rank_atypical"] < ok["rank_implausible"]).mean(),
            "typical > implausible": (ok["rank_typical"] < ok["rank_implausible"]).mean(),
            "exact order": ok["exact"].astype(float).mean(),
            "mean Kendall tau": ok["kendall_tau"].mean(),
        }
        for m, v in metrics.items():
            rows.append(dict(source=src, metric=m, value=float(v) if n else np.nan, n=int(n), n_dropped=int(dropped)))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- reference values

#: Ettinger (2020) BERT-base / BERT-large numbers, reference not target. Filled only with values
#: verified through the search tool; see the notebook for the source line of each.
REFERENCE: list[dict] = []


def reference_table() -> pd.DataFrame:
    cols = ["suite", "metric", "model", "value", "source"]
    return pd.DataFrame(REFERENCE, columns=cols)


# ----------------------------------------------------------------------------- notebook helpers


def subset_items(suites: dict[str, pd.DataFrame], max_items: int) -> dict[str, pd.DataFrame]:
    """The first ``max_items`` items of each suite (ROLE: the first ``max_items`` role-reversal
    pairs, both members kept), for quick runs."""
    if max_items < 1:
        raise ValueError(f"max_items must be positive, got {max_items}")
    out = {}
    for name, df in suites.items():
        if name == "ROLE":
            keep = list(dict.fromkeys(df["pair"]))[:max_items]
            out[name] = df[df["pair"].isin(keep)].reset_index(drop=True)
        else:
            out[name] = df.head(max_items).reset_index(drop=True)
    return out


def binomial_p(successes: int, n: int, chance: float = 0.5) -> float:
    """One-sided exact binomial p-value of doing at least this well by chance."""
    from scipy.stats import binomtest

    return float(binomtest(int(successes), int(n), chance, alternative="greater").pvalue) if n else float("nan")


def findings(summary: pd.DataFrame, sens: pd.DataFrame, sp_summary: pd.DataFrame, labels: dict[str, str]) -> list[str]:
    """Markdown bullet points computed from this run's tables (the "What this run shows" cell)."""
    out = []
    val = summary.set_index(["source", "suite", "variant", "metric"])["value"]
    main = [s for s in labels if s != "control"]
    for src in main + ["control"]:
        if src not in set(summary["source"]):
            continue
        parts = []
        for suite, metric, name in [("CPRAG", "accuracy@5", "CPRAG accuracy@5"),
                                    ("CPRAG", "sensitivity: expected vs both", "CPRAG sensitivity"),
                                    ("ROLE", "accuracy@5", "ROLE accuracy@5"),
                                    ("ROLE", "sensitivity: canonical vs reversed", "ROLE sensitivity"),
                                    ("NEG-SIMP", "sensitivity: affirmative", "NEG-SIMP affirmative"),
                                    ("NEG-SIMP", "sensitivity: negated", "NEG-SIMP negated")]:
            key = (src, suite, "original", metric)
            if key in val.index:
                parts.append(f"{name} {val[key]:.2f}")
        if parts:
            out.append(f"**{labels.get(src, src)}** ({src}): " + ", ".join(parts) + ".")
    s = sens[(sens["variant"] == "original")]
    for src in main:
        for suite, comp, what in [("ROLE", "canonical vs reversed", "role reversal (ROLE)"),
                                  ("NEG-SIMP", "affirmative", "true over false completions in affirmative NEG-SIMP contexts"),
                                  ("NEG-SIMP", "negated", "true over false completions in negated NEG-SIMP contexts")]:
            r = s[(s["source"] == src) & (s["suite"] == suite) & (s["comparison"] == comp)]
            if len(r) and r["n"].iloc[0]:
                n, rate = int(r["n"].iloc[0]), float(r["sensitivity"].iloc[0])
                p = binomial_p(round(rate * n), n)
                verdict = "above chance" if p < 0.05 else "not distinguishable from chance"
                out.append(f"{labels.get(src, src)} prefers {what} in {rate:.0%} of {n} comparisons: {verdict} "
                           f"(one-sided binomial p = {p:.3g}).")
        aff = s[(s["source"] == src) & (s["suite"] == "NEG-SIMP") & (s["comparison"] == "affirmative")]["sensitivity"]
        neg = s[(s["source"] == src) & (s["suite"] == "NEG-SIMP") & (s["comparison"] == "negated")]["sensitivity"]
        if len(aff) and len(neg) and aff.iloc[0] - neg.iloc[0] > 0.25:
            out.append(f"As Ettinger found for BERT, negation is the weak spot: {aff.iloc[0]:.0%} right in affirmative "
                       f"contexts but {neg.iloc[0]:.0%} in negated ones (the completion that is true without 'not' keeps winning).")
    sp = sp_summary.set_index(["source", "metric"])["value"]
    for src in main + ["control"]:
        if (src, "exact order") in sp.index:
            out.append(f"Selectional preferences, {labels.get(src, src)}: typical > atypical in "
                       f"{sp[(src, 'typical > atypical')]:.0%}, atypical > implausible in {sp[(src, 'atypical > implausible')]:.0%}, "
                       f"full order in {sp[(src, 'exact order')]:.0%} of verbs (chance 50%, 50%, 17%).")
    return out


# ----------------------------------------------------------------------------- notebook 05 helpers

#: headline numbers of notebook 05: name (``{source}`` filled in) -> table, key, column
KEY_NUMBERS = (
    ("CPRAG accuracy@5 ({source})", "accuracy", ("CPRAG", "original", 5)),
    ("ROLE sensitivity ({source})", "sensitivity", ("ROLE", "original", "canonical vs reversed")),
    ("NEG negated sensitivity ({source})", "sensitivity", ("NEG-SIMP", "original", "negated")),
)


def key_numbers(accuracy: pd.DataFrame, sens: pd.DataFrame, source: str) -> dict[str, float]:
    """The report's headline numbers for ``source``: CPRAG accuracy@5, ROLE and negated NEG-SIMP
    sensitivity on the original items; a suite this run did not score is left out."""
    tables = {"accuracy": accuracy.set_index(["source", "suite", "variant", "k"])["accuracy"],
              "sensitivity": sens.set_index(["source", "suite", "variant", "comparison"])["sensitivity"]}
    out = {}
    for name, table, key in KEY_NUMBERS:
        if (source, *key) in tables[table].index:
            out[name.format(source=source)] = float(tables[table][(source, *key)])
    return out


def suite_sizes(suites: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Items per suite; ROLE counts role-reversal pairs (two contexts each), as Ettinger's ROLE-88 is 44 pairs."""
    return {k: int(v["pair"].nunique()) if k == "ROLE" else len(v) for k, v in suites.items()}


def example_predictions(queries: pd.DataFrame, top: pd.DataFrame, source: str, per_suite: int = 2,
                        width: int = 70) -> pd.DataFrame:
    """A few original contexts per suite (accuracy rows and negated NEG contexts) with the expected
    word and ``source``'s top predictions in rank order: ``[context, expected, top (source)]``."""
    show = queries[queries["accuracy_row"] | (queries["condition"] == "TN")].drop_duplicates("context")
    show = show[show["variant"] == "original"].groupby("suite").head(per_suite)
    t = top[top["source"] == source]
    k = int(t["rank"].max()) if len(t) else 0
    return pd.DataFrame({"context": show["context"].str[-width:].to_numpy(), "expected": show["expected"].to_numpy(),
                         f"top {k} ({source})": [" ".join(t[t["context"] == c].sort_values("rank")["token"])
                                                 for c in show["context"]]})


#: the metrics notebook 05 shows per perturbation variant
PERTURBATION_METRICS = {"CPRAG": ("accuracy@5", "sensitivity: expected vs both"),
                        "ROLE": ("accuracy@5", "sensitivity: canonical vs reversed")}


def perturbation_table(summary: pd.DataFrame, suite: str) -> pd.DataFrame:
    """``suite``'s accuracy@5 and sensitivity per variant (rows) and source (columns), with the
    spread over shuffle draws (``sd``) where the summary has it."""
    rows = summary[(summary["suite"] == suite) & summary["metric"].isin(PERTURBATION_METRICS[suite])]
    values = ["value", "sd"] if "sd" in rows and rows["sd"].notna().any() else "value"
    return rows.pivot_table(index=["metric", "variant"], columns="source", values=values)
