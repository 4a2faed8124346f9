"""World knowledge: factual cloze (LAMA), negated and misprimed queries, physical commonsense.

Reproduces, for any BERT-style model, the studies the Primer in BERTology (Rogers et al. 2020,
§3.3 "World knowledge") summarises:

- **LAMA** (Petroni et al. 2019, *Language Models as Knowledge Bases?*, §3-4, Table 2): a fact
  (subject, relation, object) becomes a cloze sentence ("Dante was born in [MASK] .") and the
  model must rank the object first. P@k per relation (share of its facts), averaged over the
  relations of a corpus as LAMA's ``scripts/run_experiments.py`` does: T-REx and Google-RE over
  their relation files, ConceptNet and SQuAD one relation each. As in LAMA, only facts whose
  object is a single word piece are kept (we count the others), and predictions are ranked over a
  candidate vocabulary: LAMA's common vocabulary file is not in our data, so we use the model's
  own whole-word tokens (no ``##`` continuation pieces, no special or ``[unused]`` tokens).
  The facts come from Kassner & Schütze's release, a *subset* of LAMA: its P@k is not Petroni et
  al.'s full-LAMA figure (declared in the register).
- **Negated and misprimed LAMA** (Kassner & Schütze 2020, *Negated and Misprimed Probes*, §2-3):
  "Dante was not born in [MASK] ." — how often the negated query gets the *same* top-1 answer as
  the original ("overlap at 1") and Spearman's rank correlation between the two queries'
  log-probabilities over the candidate vocabulary, per fact, as LAMA's negation code computes
  them (``lama/evaluation_metrics.py``); and how often a misprime ("Talk? Birds can [MASK]")
  pulls the top-1 answer to the priming word.
- **Physical commonsense** (Forbes, Holtzman & Choi 2019, *Do Neural Language Representations
  Learn Physical Commonsense?*, Tables 2-3): object-property (OP, abstract and situated),
  object-affordance (OA) and affordance-property (AP) yes/no judgements. We probe *frozen*
  representations (no fine-tuning): each object, property and affordance is embedded on its own
  as mean-pooled word states of one layer, a pair is ``[u, v, u*v]``, and a class-balanced
  logistic regression is trained on all training pairs (the authors' object split) and tested
  on the held-out objects. Scored with Forbes's macro F1 per category (per item precision and
  recall averaged over the items of the category, items without positives skipped; their
  ``pc/metrics.py``) against their majority-by-category baseline (``pc/baselines.py``) and the
  human annotations shipped with the data. The authors fine-tune BERT instead (declared).

All metric functions take tidy DataFrames, so tests check them on hand-made predictions.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .fidelity import declare, option_differs

MASK = "[MASK]"
LAMA = "lama-negated-misprimed"
FORBES = "forbes-physical-commonsense"
STIMULI = Path(__file__).with_name("data") / "stimuli"
CORPORA = {"TREx": "T-REx", "GoogleRE": "Google-RE", "ConceptNet": "ConceptNet", "SQUAD": "SQuAD"}
QUERIES = ("original", "negated", "misprimed")


#: Study names declared here (see :mod:`bertology.fidelity`).
STUDIES = ("petroni.lama", "kassner.negated", "forbes.physical")
KASSNER_RELEASE = "kassner-schutze-release"
_LAMA_CODE = "facebookresearch/LAMA scripts/batch_eval_KB_completion.py, scripts/run_experiments.py"


def _uses_release(options: dict) -> bool:
    return options.get("lama_data") == KASSNER_RELEASE


declare("petroni.lama", "subset",
        "LAMA facts are Kassner & Schütze's negated/misprimed release (11,165 facts), a subset of LAMA, not "
        "Petroni et al.'s full LAMA (data.zip, not in our data): per-relation counts are far below LAMA's (e.g. T-REx "
        "P140 has 3 facts, ConceptNet 146, SQuAD 51) and the release does not state how facts were selected, so its "
        "P@k is not comparable with Petroni et al.'s Table 2 and no such number is printed beside it.",
        kind="data", when=_uses_release,
        reference="norakassner/LAMA_primed_negated README.md and data/*/random/*.jsonl; facebookresearch/LAMA README.md")
declare("petroni.lama", "queries",
        "Cloze sentences are the release's own `masked_sentences`; the release has no Google-RE annotator judgments, so "
        "LAMA's filter (drop a Google-RE fact with more 'no' than 'yes' judgments) cannot be applied.",
        kind="data", when=_uses_release, reference=f"{_LAMA_CODE} (filter_samples)")
declare("petroni.lama", "vocab",
        "Predictions are ranked over the model's own whole-word tokens ({candidates} candidates); LAMA ranks over "
        "common_vocab_cased.txt, the intersection of the vocabularies of the models it compares, which is not in our "
        "data. Facts whose object is not one such token are dropped and counted, as LAMA drops them.",
        reference="facebookresearch/LAMA scripts/run_experiments.py (common_vocab_filename), lama/vocab_intersection.py, "
                  "scripts/batch_eval_KB_completion.py (filter_samples)")
declare("petroni.lama", "ties",
        "Rank of the object = 1 + candidates scored strictly above it (a tie counts in its favour); LAMA takes the "
        "object's position in torch.topk order. The two differ only when log-probabilities tie exactly.",
        reference="facebookresearch/LAMA lama/evaluation_metrics.py (get_ranking)")
declare("petroni.lama", "conceptnet_by_predicate",
        "ConceptNet split by predicate (CapableOf, ...) and macro-averaged over predicates; LAMA scores ConceptNet as one "
        "relation (P@k over all its facts).",
        kind="option", when=option_differs("conceptnet_by_predicate", False),
        reference="facebookresearch/LAMA scripts/run_experiments.py (get_ConceptNet_parameters, get_Squad_parameters)")
declare("kassner.negated", "corpus_mean",
        "Overlap at 1 and Spearman are averaged over the facts of a relation (as LAMA's negation code does), then over "
        "the relations of a corpus, like P@1; LAMA's code reports them per relation only, and the paper's table "
        "could not be read here to confirm the corpus average.",
        reference="facebookresearch/LAMA scripts/batch_eval_KB_completion.py (use_negated_probes), lama/evaluation_metrics.py "
                  "(get_negation_metric)")
declare("kassner.negated", "spearman_vocab",
        "Spearman's rank correlation between original and negated log-probabilities is taken over our candidate "
        "vocabulary ({candidates} tokens), not LAMA's common vocabulary.",
        reference="facebookresearch/LAMA lama/evaluation_metrics.py (get_negation_metric)")
declare("kassner.negated", "misprime_metrics",
        "Misprime metrics (misprimed top-1 is the priming word; misprime changed the top-1) are our reading of the paper: "
        "the authors' misprime scoring code is not released (their repository holds data and a README only).",
        reference="norakassner/LAMA_primed_negated (README.md, data only)")
declare("forbes.physical", "probe",
        "Frozen representations: each object, property and affordance embedded on its own (mean-pooled word states of "
        "one layer), a class-balanced logistic regression on [u, v, u*v]. The authors fine-tune BERT end-to-end on "
        "template sentences (data/sentences, not in our data) and fit an MLP on [u, v] of GloVe/ELMo vectors.",
        kind="objective", reference="mbforbes/physical-commonsense pc/bert.py, pc/models.py, pc/experiments.py")
declare("forbes.physical", "layer_choice",
        "The probe's layer is chosen on 20% of the training objects held out, then the probe is refitted on all training "
        "pairs; the authors choose no layer (BERT is fine-tuned whole, fixed epochs).",
        reference="mbforbes/physical-commonsense pc/bert.py")
declare("forbes.physical", "max_train_pairs",
        "At most {max_train_pairs} training pairs per task (subsampled with the seed); the authors train on all of them.",
        kind="option", when=option_differs("max_train_pairs", None),
        reference="mbforbes/physical-commonsense pc/data.py (get), pc/bert.py")
declare("forbes.physical", "max_test_pairs",
        "At most {max_test_pairs} test pairs per task (subsampled with the seed); the authors test on all of them.",
        kind="option", when=option_differs("max_test_pairs", None),
        reference="mbforbes/physical-commonsense pc/data.py (get), pc/bert.py")


class KnowledgeDataError(ValueError):
    """A fact or data file is malformed; the message names the file/line and the problem."""


# ============================================================================ LAMA


def lama_files() -> list[str]:
    """Registered JSONL files of the negated/misprimed LAMA data, corpus folders first."""
    from .data import dataset_info

    return [f for f in dataset_info(LAMA)["files"] if f.endswith(".jsonl")]


def _relation_of(corpus: str, file: str, rec: dict) -> str:
    """LAMA's unit of averaging: one file per T-REx / Google-RE relation; ConceptNet and SQuAD are
    one file each (``ConceptNet/test.jsonl``, ``Squad/test.jsonl`` in facebookresearch/LAMA
    ``scripts/run_experiments.py``), so each is one "relation" whatever its predicates."""
    if corpus == "TREx":
        return Path(file).stem.split("_")[0]
    if corpus == "GoogleRE":
        return Path(file).stem
    if corpus == "ConceptNet":
        return "ConceptNet"
    if corpus == "own":
        return str(rec.get("pred", corpus))
    return "squad"


def _first(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if isinstance(v, list):
        v = v[0] if v else None
    if not isinstance(v, str) or v.count(MASK) != 1:
        raise KnowledgeDataError(f"{where}: field {key!r} must hold a sentence with exactly one {MASK}, got {v!r}")
    return re.sub(r"\s+", " ", v).strip()


def parse_lama_lines(lines: Sequence[str], corpus: str, file: str) -> pd.DataFrame:
    """Facts of one JSONL file: ``corpus, relation, predicate, uuid, sub_label, obj_label, original,
    negated, misprimed``. ``predicate`` is ConceptNet's ``pred`` field (empty elsewhere); ``relation``
    is LAMA's unit of averaging (see :func:`_relation_of`)."""
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowledgeDataError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(rec.get("obj_label"), str) or not rec["obj_label"].strip():
            raise KnowledgeDataError(f"{where}: missing obj_label")
        rows.append(dict(corpus=CORPORA.get(corpus, corpus), relation=_relation_of(corpus, file, rec),
                         predicate=str(rec.get("pred", "")), uuid=str(rec.get("uuid", n)), sub_label=str(rec.get("sub_label", "")),
                         obj_label=rec["obj_label"].strip(),
                         original=_first(rec, "masked_sentences", where),
                         negated=_first(rec, "masked_negations", where),
                         misprimed=_first(rec, "masked_misprimed", where)))
    return pd.DataFrame(rows)


def load_lama(facts_per_relation: int | None = None, seed: int = 0, corpora: Sequence[str] | None = None,
              path: str | Path | None = None, conceptnet_by_predicate: bool = False) -> pd.DataFrame:
    """LAMA facts with negated and misprimed queries (Kassner & Schütze 2020 release).

    From the registered files (mirror/cache/download; ``DataUnavailableError`` offline), or from
    ``path`` (one JSONL file in the same format, e.g. our shipped fallback facts). At most
    ``facts_per_relation`` facts per relation, drawn with ``seed``. ``corpora`` filters by name
    (``T-REx``, ``Google-RE``, ``ConceptNet``, ``SQuAD``).

    ConceptNet is one relation, as in LAMA (its P@k is the share over all its facts);
    ``conceptnet_by_predicate=True`` (ours) splits it by ConceptNet predicate (``CapableOf``, ...),
    which makes the corpus figure a macro average over predicates and samples per predicate.
    """
    if path is not None:
        path = Path(path)
        frames = [parse_lama_lines(path.read_text(encoding="utf-8").splitlines(), "own", path.name)]
        frames[0]["corpus"] = "bertology facts"
    else:
        from .data import data_path

        frames = []
        for f in lama_files():
            corpus = f.split("/")[1]
            if corpora and CORPORA.get(corpus, corpus) not in corpora:
                continue
            frames.append(parse_lama_lines(data_path(LAMA, f).read_text(encoding="utf-8").splitlines(), corpus, f))
    if not frames:
        raise ValueError(f"no LAMA files match corpora={corpora!r}; known: {sorted(CORPORA.values())}")
    facts = pd.concat(frames, ignore_index=True)
    if conceptnet_by_predicate:
        cn = (facts["corpus"] == "ConceptNet") & (facts["predicate"] != "")
        facts.loc[cn, "relation"] = facts.loc[cn, "predicate"]
    if facts_per_relation is not None:
        facts = sample_facts(facts, facts_per_relation, seed)
    return facts


def sample_facts(facts: pd.DataFrame, per_relation: int, seed: int = 0) -> pd.DataFrame:
    """At most ``per_relation`` facts of each (corpus, relation), drawn with ``seed``, in file order."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, g in facts.groupby(["corpus", "relation"], sort=False):
        keep += list(rng.choice(g.index.to_numpy(), min(len(g), per_relation), replace=False))
    return facts.loc[sorted(keep)].reset_index(drop=True)


def load_own_facts() -> pd.DataFrame:
    """Our small shipped fact set (written for bertology; same JSONL format), the offline fallback."""
    return load_lama(path=STIMULI / "facts.jsonl")


def candidate_vocab(tokenizer) -> list[str]:
    """Whole-word tokens of the tokenizer: LAMA ranks over a common vocabulary, which our data
    lacks, so we rank over every token that is a word start (no ``##`` pieces, no ``[...]``
    special or unused tokens)."""
    special = set(tokenizer.all_special_tokens)
    return [t for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            if t not in special and not t.startswith("##") and not (t.startswith("[") and t.endswith("]"))]


def single_piece_facts(facts: pd.DataFrame, tokenizer, vocab: Sequence[str] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep facts whose object is one word piece (and in ``vocab`` when given), as LAMA does.

    Returns ``(kept, counts)`` with counts per ``corpus, relation``: ``n_facts, n_kept, n_dropped``.
    """
    from .cloze import word_pieces

    allowed = None if vocab is None else set(vocab)
    keep = []
    for obj in facts["obj_label"]:
        p = word_pieces(tokenizer, obj)
        ok = len(p) == 1 and (allowed is None or tokenizer.convert_ids_to_tokens(p)[0] in allowed)
        keep.append(ok)
    keep = np.asarray(keep, dtype=bool)
    f = facts.assign(kept=keep)
    counts = (f.groupby(["corpus", "relation"], sort=False)["kept"]
              .agg(n_facts="size", n_kept="sum").reset_index())
    counts["n_kept"] = counts["n_kept"].astype(int)
    counts["n_dropped"] = counts["n_facts"] - counts["n_kept"]
    return facts[keep].reset_index(drop=True), counts


def _allowed_ids(tokenizer, vocab: Sequence[str] | None):
    """Token ids that predictions are ranked over: the single-piece words of ``vocab``, or every
    non-special token when ``vocab`` is None."""
    import torch

    from .cloze import word_pieces

    if vocab is None:
        special = set(tokenizer.all_special_ids)
        return torch.as_tensor([i for i in range(len(tokenizer)) if i not in special])
    ids = sorted({p[0] for p in (word_pieces(tokenizer, w) for w in vocab) if len(p) == 1})
    if not ids:
        raise ValueError("no word of `vocab` is a single word piece of this tokenizer")
    return torch.as_tensor(ids)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors (average ranks for ties), as
    ``scipy.stats.spearmanr``: what Kassner & Schütze's negation code computes between the
    log-probabilities of the original and the negated query over the whole candidate vocabulary."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0])


def score_lama(scorer, facts: pd.DataFrame, vocab: Sequence[str] | None = None, k: int = 10,
               batch_size: int = 32, queries: Sequence[str] = QUERIES, progress: bool = False
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every query of every fact through ``scorer``: one forward pass per distinct (fact, query)
    sequence, in the engine's length buckets (:func:`bertology.scorers.masked_log_probs`).

    Returns ``(ranks, top)``. ``ranks`` has per fact and query ``source, corpus, relation, uuid,
    query, obj_label, rank, logprob, spearman``: ``rank`` of the object among ``vocab`` (1 = best,
    ties in its favour; NaN when the object is not one word piece), and on ``negated`` rows
    ``spearman``, the rank correlation between the log-probabilities the original and the negated
    query give every candidate (Kassner & Schütze 2020, as computed in facebookresearch/LAMA
    ``lama/evaluation_metrics.py``, ``get_negation_metric``); NaN on other rows. ``top``: the
    top-``k`` tokens per fact and query (``source, corpus, relation, uuid, query, rank, token, logprob``).
    """
    from .scorers import encode_masked, masked_log_probs, word_pieces

    tok = scorer.tokenizer
    queries = list(queries)
    allowed = _allowed_ids(tok, vocab)
    n = len(facts)
    keys, seqs, pos = [], [], []
    for q in queries:
        for i, sent in enumerate(facts[q]):
            ids, at = encode_masked(scorer, sent, f"fact {i}, query {q!r}")
            keys.append((q, i))
            seqs.append(ids)
            pos.append(at)
    target = []
    for obj in facts["obj_label"]:
        p = word_pieces(tok, obj)
        target.append(p[0] if len(p) == 1 else -1)
    rank = {q: np.full(n, np.nan) for q in queries}
    logp = {q: np.full(n, np.nan) for q in queries}
    rho = np.full(n, np.nan)
    negation = "original" in queries and "negated" in queries
    waiting: dict[int, np.ndarray] = {}  # fact -> the first of its original/negated rows to arrive
    top_rows = []
    names_of = {}
    for idx, out in masked_log_probs(scorer, seqs, pos, batch_size, progress=progress, desc="LAMA"):
        out = out.float().cpu()
        sub = out[:, allowed]
        for b, r in enumerate(idx.tolist()):
            q, i = keys[r]
            t = target[i]
            if t >= 0:  # the engine's rank: allowed candidates scored strictly above the object, + 1
                v = out[b, t]
                logp[q][i] = float(v)
                rank[q][i] = float(1 + (sub[b] > v).sum())
            if negation and q in ("original", "negated"):
                if i in waiting:  # Kassner & Schütze: rank correlation of the two distributions
                    rho[i] = spearman(waiting.pop(i), sub[b].numpy())
                else:
                    waiting[i] = sub[b].numpy().copy()
        if k:
            kk = min(k, sub.shape[1])
            v, j = sub.topk(kk, dim=1)
            for b, r in enumerate(idx.tolist()):
                q, i = keys[r]
                toks = allowed[j[b]].tolist()
                for rr in range(kk):
                    if toks[rr] not in names_of:
                        names_of[toks[rr]] = tok.convert_ids_to_tokens(toks[rr])
                    top_rows.append((q, i, rr + 1, names_of[toks[rr]], float(v[b, rr])))
    base = facts[["corpus", "relation", "uuid", "obj_label"]].reset_index(drop=True)
    ranks = pd.concat([base.assign(query=q, rank=rank[q], logprob=logp[q],
                                   spearman=rho if q == "negated" else np.nan) for q in queries], ignore_index=True)
    ranks = ranks[["corpus", "relation", "uuid", "query", "obj_label", "rank", "logprob", "spearman"]]
    ranks.insert(0, "source", scorer.source)
    top = pd.DataFrame(top_rows, columns=["query", "item", "rank", "token", "logprob"])
    top = top.merge(base[["corpus", "relation", "uuid"]].assign(item=range(n)), on="item")
    top["q_order"] = top["query"].map({q: j for j, q in enumerate(queries)})
    top = top.sort_values(["q_order", "item", "rank"], ignore_index=True)
    top.insert(0, "source", scorer.source)
    return ranks, top[["source", "corpus", "relation", "uuid", "query", "rank", "token", "logprob"]]


def precision_at_k(ranks: pd.DataFrame, ks: Sequence[int] = (1, 10)) -> pd.DataFrame:
    """P@k per relation (Petroni et al. 2019): share of facts whose object ranks ``<= k``.

    Input rows: ``source, corpus, relation, rank`` (only ``query == "original"`` rows are used when
    a ``query`` column exists). Output: ``source, corpus, relation, k, precision, n``.
    """
    r = ranks[ranks["query"] == "original"] if "query" in ranks.columns else ranks
    keys = [c for c in ("source", "corpus", "relation") if c in r.columns]
    out = []
    for key, g in r.groupby(keys, sort=False):
        base = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rk = g["rank"].to_numpy(dtype=float)
        for k in ks:
            out.append({**base, "k": int(k), "precision": float((np.nan_to_num(rk, nan=np.inf) <= k).mean()),
                        "n": int(len(g))})
    return pd.DataFrame(out)


def macro_by_corpus(per_relation: pd.DataFrame, value: str = "precision") -> pd.DataFrame:
    """Mean over the relations of each corpus (LAMA's macro average): ``source, corpus, k, value,
    n_relations, n_facts``."""
    keys = [c for c in ("source", "corpus", "k", "metric") if c in per_relation.columns]
    return (per_relation.groupby(keys, sort=False)
            .agg(value=(value, "mean"), n_relations=(value, "size"), n_facts=("n", "sum"))
            .reset_index())


def negation_spearman(ranks: pd.DataFrame) -> pd.DataFrame:
    """Kassner & Schütze's rank correlation, per relation: the mean over facts of the Spearman
    correlation between the original and the negated query's log-probabilities over the candidate
    vocabulary (the ``spearman`` column of :func:`score_lama`; facebookresearch/LAMA averages it
    over the facts of a relation file in ``scripts/batch_eval_KB_completion.py``). Facts without a
    value are left out, as there. Output: ``source, corpus, relation, metric, value, n``.
    """
    r = ranks[(ranks["query"] == "negated") & ranks["spearman"].notna()] if "query" in ranks.columns else ranks
    keys = [c for c in ("source", "corpus", "relation") if c in r.columns]
    out = (r.groupby(keys, sort=False)["spearman"].agg(value="mean", n="size").reset_index())
    out.insert(len(keys), "metric", "spearman (original vs negated)")
    out["n"] = out["n"].astype(int)
    return out[[*keys, "metric", "value", "n"]]


def negation_overlap(top: pd.DataFrame, facts: pd.DataFrame) -> pd.DataFrame:
    """Kassner & Schütze (2020) on top-1 answers, per relation.

    Metrics: ``same top-1 as original`` (negated query's top-1 = original query's top-1: the model
    ignores the negation; Kassner & Schütze's "overlap at 1", 0/1 per fact in facebookresearch/LAMA
    ``lama/evaluation_metrics.py``, averaged over the facts of a relation), ``negated top-1 is the true object`` (it still asserts the fact it was
    asked to deny), ``misprime is top-1`` (the misprimed query's top-1 is the priming word, e.g.
    "Talk?") and ``misprime changed top-1``. Also ``two facts share top-1 (baseline)``: the chance
    that two different facts of the relation get the same original top-1 answer; a predictor that
    says the same word whatever the subject scores 1 there and trivially "ignores" negation too.
    Output: ``source, corpus, relation, metric, value, n``.
    """
    t1 = top[top["rank"] == 1].pivot_table(index=["source", "corpus", "relation", "uuid"], columns="query",
                                           values="token", aggfunc="first").reset_index()
    info = facts[["corpus", "relation", "uuid", "obj_label"]].copy()
    info["prime"] = [m.split("?")[0].strip().split()[-1].lower() if "?" in m else "" for m in facts["misprimed"]]
    t1 = t1.merge(info, on=["corpus", "relation", "uuid"], how="left")
    gold = t1["obj_label"].str.lower()
    cols = set(t1.columns)
    out = []
    for key, g in t1.groupby(["source", "corpus", "relation"], sort=False):
        base = dict(zip(["source", "corpus", "relation"], key))
        gi = gold.loc[g.index]
        if {"original", "negated"} <= cols:
            out.append({**base, "metric": "same top-1 as original", "value": float((g["negated"] == g["original"]).mean()), "n": len(g)})
            out.append({**base, "metric": "negated top-1 is the true object",
                        "value": float((g["negated"].str.lower() == gi).mean()), "n": len(g)})
        if "original" in cols and len(g) > 1:
            c = g["original"].value_counts().to_numpy()
            out.append({**base, "metric": "two facts share top-1 (baseline)",
                        "value": float((c * (c - 1)).sum() / (len(g) * (len(g) - 1))), "n": len(g)})
        if {"original", "misprimed"} <= cols:
            out.append({**base, "metric": "misprime is top-1", "value": float((g["misprimed"].str.lower() == g["prime"]).mean()), "n": len(g)})
            out.append({**base, "metric": "misprime changed top-1",
                        "value": float((g["misprimed"] != g["original"]).mean()), "n": len(g)})
    return pd.DataFrame(out)


# ============================================================================ Forbes et al. 2019

TASKS = ("abstract-OP", "situated-OP", "situated-OA", "situated-AP")
TASK_CATEGORIES = {"abstract-OP": ("object", "property"), "situated-OP": ("object", "property"),
                   "situated-OA": ("object", "affordance"), "situated-AP": ("affordance", "property")}
_PC = "data/pc/"


def _forbes_file(name: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root) / name
    from .data import data_path

    return data_path(FORBES, name)


def _uids(name: str, root) -> list[str]:
    return [x.strip() for x in _forbes_file(_PC + name, root).read_text().splitlines() if x.strip()]


def load_forbes(task: str, root: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` pairs of one Forbes et al. (2019) task: columns ``a, b, label`` (0/1).

    Built as the authors' loader builds them (read to understand): abstract-OP from the 514 x 50
    matrix with {1} -> 1 and {0, -1, -2} -> 0; situated-OP one row per COCO object instance and
    property; situated-OA the 3 yes and 3 no affordances of each instance; situated-AP each yes
    affordance of an instance paired with every property of that same instance. Train/test split
    by object (the shipped uid lists). ``root``: a folder holding ``data/pc/...`` instead of the registry.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    split = "abstract" if task == "abstract-OP" else "situated"
    train_ids = set(_uids(f"{split}-train-object-uids.txt", root))
    test_ids = set(_uids(f"{split}-test-object-uids.txt", root))

    def expand(df: pd.DataFrame) -> pd.DataFrame:
        long = df.melt(id_vars="objectUID", var_name="b", value_name="label").rename(columns={"objectUID": "a"})
        return long.assign(label=(long["label"].astype(int) > 0).astype(int))

    if task in ("abstract-OP", "situated-OP"):
        name = "abstract.csv" if task == "abstract-OP" else "situated-properties.csv"
        df = pd.read_csv(_forbes_file(_PC + name, root))
        df = df.drop(columns=[c for c in ("cocoImgID", "cocoAnnID") if c in df.columns])
        pairs = expand(df)
        pairs["obj"] = pairs["a"]
    else:
        aff = pd.read_csv(_forbes_file(_PC + "situated-affordances-sampled.csv", root))
        if task == "situated-OA":
            rows = []
            for r in aff.itertuples(index=False):
                rows += [(r.objectUID, v.strip(), 1, r.objectUID) for v in r.affordancesYes.split(",")]
                rows += [(r.objectUID, v.strip(), 0, r.objectUID) for v in r.affordancesNo.split(",")]
            pairs = pd.DataFrame(rows, columns=["a", "b", "label", "obj"])
        else:
            props = pd.read_csv(_forbes_file(_PC + "situated-properties.csv", root))
            pcols = [c for c in props.columns if c not in ("cocoImgID", "cocoAnnID", "objectUID")]
            vecs = dict(zip(props["cocoAnnID"], (props[pcols].to_numpy() > 0).astype(int)))
            a, b, lab, obj = [], [], [], []
            for ann, yes, o in zip(aff["cocoAnnID"], aff["affordancesYes"], aff["objectUID"]):
                if ann not in vecs:
                    raise KnowledgeDataError(f"situated-AP: COCO annotation {ann} has affordances but no properties")
                for v in yes.split(","):
                    a += [v.strip()] * len(pcols)
                    b += pcols
                    lab.append(vecs[ann])
                    obj += [o] * len(pcols)
            pairs = pd.DataFrame({"a": a, "b": b, "label": np.concatenate(lab), "obj": obj})
    train = pairs[pairs["obj"].isin(train_ids)].reset_index(drop=True)
    test = pairs[pairs["obj"].isin(test_ids)].reset_index(drop=True)
    return train, test


def forbes_texts(root: str | Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """How objects and properties are worded when embedded: objects by the dataset's ``original``
    word(s) ("baseball bat"), properties by their ``sentence`` phrase ("is used for cooking").
    Affordances are the verbs themselves."""
    objs = pd.read_csv(_forbes_file(_PC + "objects.tsv", root), sep="\t")
    props = pd.read_csv(_forbes_file(_PC + "properties.tsv", root), sep="\t")
    clean = lambda s: re.sub(r"<[^>]+>", "", str(s)).strip()  # noqa: E731
    return dict(zip(objs["uid"], objs["original"].map(clean))), dict(zip(props["uid"], props["sentence"].map(clean)))


def forbes_f1(a: Sequence[str], b: Sequence[str], y: Sequence[int], yhat: Sequence[int],
              categories: tuple[str, str] = ("a", "b")) -> dict:
    """Forbes et al. (2019) scores: accuracy, micro F1 and one macro F1 per category.

    Macro F1 of a category (e.g. "object"): for every item of it (every object) precision and
    recall over that item's pairs, items with no positive label skipped, precision 1 when nothing
    was predicted positive; F1 of the mean precision and mean recall.
    """
    a, b = np.asarray(a), np.asarray(b)
    y, yhat = np.asarray(y, dtype=int), np.asarray(yhat, dtype=int)
    if not (len(a) == len(b) == len(y) == len(yhat)):
        raise ValueError("a, b, y and yhat must have the same length")

    def prf(yy, pp):
        tp, fp, fn = int(((yy == 1) & (pp == 1)).sum()), int(((yy == 0) & (pp == 1)).sum()), int(((yy == 1) & (pp == 0)).sum())
        p = 1.0 if tp + fp == 0 else tp / (tp + fp)
        r = 1.0 if tp + fn == 0 else tp / (tp + fn)
        return p, r, (0.0 if p + r == 0 else 2 * p * r / (p + r))

    out = {"accuracy": float((y == yhat).mean()) if len(y) else np.nan, "micro": prf(y, yhat)[2]}
    for cat, items in zip(categories, (a, b)):
        ps, rs = [], []
        for it in pd.unique(items):
            m = items == it
            if y[m].sum() == 0:
                continue
            p, r, _ = prf(y[m], yhat[m])
            ps.append(p)
            rs.append(r)
        mp, mr = (np.mean(ps), np.mean(rs)) if ps else (np.nan, np.nan)
        out[cat] = float(0.0 if mp + mr == 0 else 2 * mp * mr / (mp + mr))
    return out


def majority_baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Forbes's "majority by category" (mbforbes/physical-commonsense ``pc/baselines.py``,
    ``_maj_cat``): for each right-hand item (property/affordance) the majority training label;
    a tie goes to the label that item had **first** in the training pairs (their
    ``Counter.most_common`` keeps insertion order among equal counts); unseen items get 1.

    ``train`` must be in the authors' pair order (as :func:`load_forbes` builds it).
    """
    votes: dict[str, list[int]] = {}
    first: dict[str, int] = {}
    for b, y in zip(train["b"], train["label"].astype(int)):
        c = votes.setdefault(b, [0, 0])
        c[y] += 1
        first.setdefault(b, y)
    maj = {b: (1 if c[1] > c[0] else 0 if c[0] > c[1] else first[b]) for b, c in votes.items()}
    return np.asarray([maj.get(x, 1) for x in test["b"]], dtype=int)


def human_scores(root: str | Path | None = None, limit: int = 50) -> pd.DataFrame:
    """Expert annotations vs gold on the first ``limit`` pairs of each task (the authors' protocol),
    scored with :func:`forbes_f1`: ``task, category, value, n``."""
    rows = []
    for task in TASKS:
        cats = TASK_CATEGORIES[task]
        labels = [x.strip() for x in _forbes_file(f"data/human/{task}-round1-labels.txt", root).read_text().splitlines()][:limit]
        gold = [int(x) for x in _forbes_file(f"data/human/{task}-round1-gold.txt", root).read_text().split()][:limit]
        ann = pd.read_csv(_forbes_file(f"data/human/{task}-round1-annotations-first50.csv", root)).iloc[:limit, 1].astype(int)
        a, b = zip(*(lab.split("/") for lab in labels))
        s = forbes_f1(a, b, gold, ann.to_numpy(), cats)
        for cat in (*cats, "micro"):
            rows.append(dict(task=task, category=cat, value=s[cat], n=len(gold)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- embeddings and probes


def embed_texts(loaded, texts: Sequence[str], batch_size: int = 64, cache_dir=None, progress: bool = True) -> np.ndarray:
    """``[n_texts, layers + 1, hidden]``: each text alone as ``[CLS] text [SEP]``, word states
    mean-pooled over its pieces (``extract`` word level), then over its words."""
    from .extract import states

    per = states(loaded, [t.split() for t in texts], pool="mean", unit="word", batch_size=batch_size,
                 cache=cache_dir, progress=progress, desc="embed")
    return np.stack([h.mean(axis=1) for h in per])


def pair_features(ea: np.ndarray, eb: np.ndarray) -> np.ndarray:
    """``[u, v, u * v]`` for each pair (rows of ``ea`` and ``eb``)."""
    return np.concatenate([ea, eb, ea * eb], axis=1)


def _class_weights(y: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Per-row weights of the class-balanced objective: scikit-learn's ``class_weight="balanced"``
    on the data in which each row stands for ``cnt`` identical rows."""
    n = float(cnt.sum())
    pos = float(cnt @ y)
    return cnt * np.where(y > 0, n / (2 * pos), n / (2 * (n - pos)))


def _check_counts(y: np.ndarray, counts) -> np.ndarray:
    cnt = np.ones(len(y), dtype=np.float64) if counts is None else np.asarray(counts, dtype=np.float64)
    if cnt.shape != y.shape or (cnt <= 0).any():
        raise ValueError("counts must be positive, one per training row")
    return cnt


def _fit_logistic(loss_sum, n: float, dim: int, c: float, max_iter: int):
    """``(w, b)`` minimising ``loss_sum(w, b)`` (the weighted sum of the training rows' log-losses)
    / n + ||w||^2 / (2 c n), by full-batch L-BFGS (strong Wolfe line search) from zero weights."""
    import torch

    w = torch.zeros(dim, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_sum(w, b) / n + (w @ w) / (2 * c * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def fit_predict(x_train, y_train, x_test, seed: int = 0, c: float = 1.0, max_iter: int = 100,
                counts=None, decision: bool = False) -> np.ndarray:
    """Class-balanced, standardised, L2-regularised logistic regression; 0/1 predictions for ``x_test``.

    The same objective as scikit-learn's ``LogisticRegression(C=c, class_weight="balanced")``
    (mean-normalised: loss = weighted mean log-loss + ||w||^2 / (2 c n)), fitted full-batch with
    L-BFGS in torch from zero weights, so it is deterministic and fast on thousands of
    1,000-dimensional pair features. ``counts`` (optional, one per row) says how many identical
    training rows a row stands for: the objective, the class balance and the standardisation are
    those of the expanded data, computed without expanding it. ``decision``: the test rows' decision
    values (logits; > 0 predicts 1) instead of the predictions. :func:`fit_predict_pairs` fits the
    same regression on pair features without forming them.
    """
    import torch

    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.float32)
    if len(np.unique(y_train)) < 2:
        return np.full(len(x_test), (2.0 * y_train[0] - 1) * np.inf if decision else int(y_train[0]))
    cnt = _check_counts(y_train, counts)
    n = float(cnt.sum())
    mu = (cnt @ x_train.astype(np.float64)) / n
    sd = (np.sqrt((cnt @ (x_train.astype(np.float64) - mu) ** 2) / n) + 1e-6).astype(np.float32)
    mu = mu.astype(np.float32)
    x = torch.as_tensor((x_train - mu) / sd)
    y = torch.as_tensor(y_train)
    weight = torch.as_tensor(_class_weights(y_train, cnt).astype(np.float32))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    w, b = _fit_logistic(lambda w, b: bce(x @ w + b, y, weight=weight, reduction="sum"), n, x.shape[1], c, max_iter)
    xt = torch.as_tensor((np.asarray(x_test, dtype=np.float32) - mu) / sd)
    s = (xt @ w + b).numpy()
    return s if decision else (s > 0).astype(int)


def fit_predict_pairs(left: np.ndarray, right: np.ndarray, a, b, y_train, test_a, test_b, seed: int = 0,
                      c: float = 1.0, max_iter: int = 100, counts=None, decision: bool = False) -> np.ndarray:
    """:func:`fit_predict` on the pair features ``[u, v, u * v]`` (:func:`pair_features`) of
    ``u = left[a[i]]``, ``v = right[b[i]]``, without forming them: 0/1 predictions for the pairs
    ``(left[test_a[j]], right[test_b[j]])`` (``decision``: their decision values, as :func:`fit_predict`).

    Forbes's pairs combine a few hundred objects with a few dozen properties, so every logit of
    the training objects x properties grid comes from three small products: ``u·w1`` and ``v·w2``
    (each table times its weights) and ``(u * v)·w3 = u^T diag(w3) v`` (one product of the two
    tables). The rows' log-losses are summed per grid cell (the cell's positive and negative rows
    weighted together), and the standardisation (weighted mean and standard deviation of every
    feature of the expanded data, as :func:`fit_predict`) comes from the tables and the pair
    counts, folded into the weights after centring the tables. The objective, the optimiser and
    its start are :func:`fit_predict`'s; the float32 sums run in another order, so a prediction
    on the decision boundary can differ (measured: 27 of 40,629 Forbes test predictions of
    MiniLM, 0.07%). A fit is several times faster than on the formed features, whose products
    stream the whole feature matrix twice per L-BFGS step.
    """
    import torch

    y_train = np.asarray(y_train, dtype=np.float64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    test_a, test_b = np.asarray(test_a, dtype=np.int64), np.asarray(test_b, dtype=np.int64)
    if a.shape != y_train.shape or b.shape != y_train.shape or test_a.shape != test_b.shape:
        raise ValueError("a, b and y_train need one entry per training pair, test_a and test_b one per test pair")
    if len(np.unique(y_train)) < 2:
        return np.full(len(test_a), (2.0 * y_train[0] - 1) * np.inf if decision else int(y_train[0]))
    cnt = _check_counts(y_train, counts)
    n = float(cnt.sum())
    ua, ia = np.unique(a, return_inverse=True)  # the training grid: its objects x its properties
    ub, ib = np.unique(b, return_inverse=True)
    L, R = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    D = L.shape[1]
    if R.shape[1] != D:
        raise ValueError(f"left and right embeddings differ in width: {L.shape[1]} and {R.shape[1]}")
    La, Rb = L[ua], R[ub]
    C = np.zeros((len(ua), len(ub)))
    np.add.at(C, (ia, ib), cnt)  # how many rows of the expanded data each cell stands for
    mu1, mu2 = C.sum(1) @ La / n, C.sum(0) @ Rb / n
    Lc, Rc = La - mu1, Rb - mu2
    mu3 = (La * (C @ Rb)).sum(0) / n
    var = np.concatenate([C.sum(1) @ Lc ** 2 / n, C.sum(0) @ Rc ** 2 / n,
                          np.maximum((La ** 2 * (C @ Rb ** 2)).sum(0) / n - mu3 ** 2, 0.0)])
    sd = torch.as_tensor((np.sqrt(var) + 1e-6).astype(np.float32))
    m1, m2 = torch.as_tensor(mu1.astype(np.float32)), torch.as_tensor(mu2.astype(np.float32))
    m3 = torch.as_tensor(((Lc * (C @ Rc)).sum(0) / n).astype(np.float32))  # mean centred product: mu3 - mu1 mu2
    weight = _class_weights(y_train, cnt)
    pos, neg = np.zeros_like(C), np.zeros_like(C)
    np.add.at(pos, (ia, ib), np.where(y_train > 0, weight, 0.0))
    np.add.at(neg, (ia, ib), np.where(y_train > 0, 0.0, weight))
    pos, neg = torch.as_tensor(pos.astype(np.float32)), torch.as_tensor(neg.astype(np.float32))
    Lt, Rt = torch.as_tensor(Lc.astype(np.float32)), torch.as_tensor(Rc.astype(np.float32))

    def parts(w):
        # (x - mu) / sd · w for x = [u, v, u * v], tables centred (u = Lc + mu1, v = Rc + mu2), w' = w / sd:
        # Lc·(w1' + mu2 w3') + Rc·(w2' + mu1 w3') + Lc diag(w3') Rc^T - mean(Lc * Rc)·w3'
        v1, v2, v3 = (w / sd).split(D)
        return v1 + m2 * v3, v2 + m1 * v3, v3, m3 @ v3

    def loss_sum(w, b0):
        p1, p2, v3, off = parts(w)
        grid = (Lt @ p1)[:, None] + (Rt @ p2)[None, :] + (Lt * v3) @ Rt.T - off + b0
        # -log sigmoid(s) for the positive rows of a cell, -log sigmoid(-s) for its negative rows
        sp = torch.nn.functional.softplus
        return (pos * sp(-grid)).sum() + (neg * sp(grid)).sum()

    w, b0 = _fit_logistic(loss_sum, n, 3 * D, c, max_iter)
    with torch.no_grad():
        p1, p2, v3, off = parts(w)
        tl = torch.as_tensor((L[test_a] - mu1).astype(np.float32))
        tr = torch.as_tensor((R[test_b] - mu2).astype(np.float32))
        s = (tl @ p1 + tr @ p2 + (tl * v3 * tr).sum(1) - off + b0).numpy()
    return s if decision else (s > 0).astype(int)


def probe_forbes(embeddings: dict[str, np.ndarray], task: str, train: pd.DataFrame, test: pd.DataFrame,
                 layers: Sequence[int], source: str, seed: int = 0, max_train: int | None = None,
                 val_fraction: float = 0.2, c: float = 0.1) -> pd.DataFrame:
    """Probe one task on frozen embeddings; tidy ``source, task, layer, split, category, value, n``.

    ``embeddings`` maps text key (object uid, property uid or affordance verb) to
    ``[layers + 1, D]``. For every layer in ``layers`` a probe is fitted on 80% of the training
    objects and scored on the other 20% (``split="val"``); the layer with the best validation
    macro F1 (mean of the task's two categories) is refitted on all training pairs and scored once
    on the held-out test objects (``split="test"``). All training pairs are used, as the authors
    train on the whole training split; ``max_train`` (ours, for speed) subsamples them (seeded).
    """
    cats = TASK_CATEGORIES[task]
    rng = np.random.default_rng(seed)
    if max_train is not None and len(train) > max_train:
        train = train.iloc[np.sort(rng.choice(len(train), max_train, replace=False))].reset_index(drop=True)
    objs = np.array(sorted(train["obj"].unique()))
    val_objs = set(rng.choice(objs, max(1, int(len(objs) * val_fraction)), replace=False))
    is_val = train["obj"].isin(val_objs).to_numpy()
    missing = sorted({x for x in pd.concat([train["a"], train["b"], test["a"], test["b"]]) if x not in embeddings})
    if missing:
        raise KeyError(f"{task}: no embedding for {missing[:5]}")

    def fit(df, layer, target):
        # Situated pairs repeat (one row per image): a distinct (a, b, label) row is fitted once with
        # its count, the same objective at a fraction of the cost; predictions per distinct (a, b).
        rows = df.groupby(["a", "b", "label"], sort=True).size().reset_index(name="count")
        pairs = target[["a", "b"]].drop_duplicates().reset_index(drop=True)
        left = sorted(set(rows["a"]) | set(pairs["a"]))
        right = sorted(set(rows["b"]) | set(pairs["b"]))
        ia, ib = {k: i for i, k in enumerate(left)}, {k: i for i, k in enumerate(right)}
        pred = fit_predict_pairs(np.stack([embeddings[k][layer] for k in left]),
                                 np.stack([embeddings[k][layer] for k in right]),
                                 rows["a"].map(ia), rows["b"].map(ib), rows["label"].to_numpy(),
                                 pairs["a"].map(ia), pairs["b"].map(ib), seed, c, counts=rows["count"].to_numpy())
        return target[["a", "b"]].merge(pairs.assign(pred=pred), on=["a", "b"], how="left")["pred"].to_numpy()

    def scores(split, layer, df, pred):
        s = forbes_f1(df["a"], df["b"], df["label"], pred, cats)
        return [dict(source=source, task=task, layer=int(layer), split=split, category=cat, value=s[cat], n=int(len(df)))
                for cat in (*cats, "micro")]

    rows, val_f1 = [], {}
    fit_df, val_df = train[~is_val], train[is_val]
    for layer in layers:
        r = scores("val", layer, val_df, fit(fit_df, layer, val_df))
        val_f1[layer] = np.mean([x["value"] for x in r if x["category"] in cats])
        rows += r
    best = max(val_f1, key=lambda k: (val_f1[k], -k))
    rows += scores("test", best, test, fit(train, best, test))
    return pd.DataFrame(rows)


def best_layer_scores(probe: pd.DataFrame) -> pd.DataFrame:
    """The test scores (at the layer chosen on validation): ``source, task, layer, category, value, n``."""
    return probe[probe["split"] == "test"].drop(columns="split").reset_index(drop=True)


# ---------------------------------------------------------------------------- reference values

#: Published numbers carried as reference, not target, each with where it was read. Only numbers
#: read from the papers, their tables or the authors' own outputs belong here. None could be read
#: in this setting: the papers' tables were not reachable through our search tool, and the
#: authors' repositories hold no result files (LAMA writes results at run time; Forbes et al.'s
#: ``data/results`` is not committed). Two Petroni et al. Table 2 values once listed here came from a
#: third-party benchmark page and were removed for that reason. Kassner & Schütze's release is a
#: subset of LAMA, so Petroni et al.'s full-LAMA P@1 would not be comparable with P@1 on it anyway.
REFERENCE: list[dict] = []


def reference_table() -> pd.DataFrame:
    return pd.DataFrame(REFERENCE, columns=["study", "corpus_or_task", "metric", "model", "value", "source"])


# ---------------------------------------------------------------------------- findings


def forbes_gains(scores: pd.DataFrame, probe_system: str, baseline: str = "majority") -> pd.DataFrame:
    """Probe macro F1 minus the baseline's, per task and category (``task, category, probe,
    baseline, gain``); ``scores`` has ``system, task, category, value``."""
    s = scores[scores["category"] != "micro"].pivot_table(index=["task", "category"], columns="system", values="value")
    out = pd.DataFrame({"probe": s[probe_system], "baseline": s[baseline]})
    out["gain"] = out["probe"] - out["baseline"]
    if "human" in s.columns:
        out["human"] = s["human"]
    return out.reset_index()


def forbes_verdict(gains: pd.DataFrame, margin: float = 0.05, control_gains: pd.DataFrame | None = None) -> dict:
    """Is the relation (AP) less learnable than properties and affordances (OP, OA)?

    Compares the mean gain over the majority baseline of the OP/OA tasks with the AP task's
    (``pattern_as_forbes``); with ``control_gains`` (the same table for the probe on the
    random-init control) also the gain of the real probe over the control probe
    (``pattern_vs_control``: OP/OA above the control by more than ``margin``, AP not).
    """
    ap = gains[gains["task"] == "situated-AP"]["gain"].mean()
    rest = gains[gains["task"] != "situated-AP"]["gain"].mean()
    out = {"gain_op_oa": float(rest), "gain_ap": float(ap),
           "op_oa_learnable": bool(rest > margin), "ap_learnable": bool(ap > margin),
           "pattern_as_forbes": bool(rest > margin and ap < rest - margin)}
    if "human" in gains.columns:
        out["shortfall_op_oa"] = float((gains["human"] - gains["probe"])[gains["task"] != "situated-AP"].mean())
        out["shortfall_ap"] = float((gains["human"] - gains["probe"])[gains["task"] == "situated-AP"].mean())
    if control_gains is not None:
        d = gains.set_index(["task", "category"])["probe"] - control_gains.set_index(["task", "category"])["probe"]
        d = d.reset_index(name="diff")
        c_rest = float(d[d["task"] != "situated-AP"]["diff"].mean())
        c_ap = float(d[d["task"] == "situated-AP"]["diff"].mean())
        out.update(over_control_op_oa=c_rest, over_control_ap=c_ap,
                   pattern_vs_control=bool(c_rest > margin and c_ap <= margin))
    return out


def lama_findings(macro: pd.DataFrame, neg_macro: pd.DataFrame, labels: dict[str, str],
                  spearman_macro: pd.DataFrame | None = None) -> list[str]:
    """Markdown bullets from this run's LAMA tables (``spearman_macro``: :func:`negation_spearman`
    averaged by :func:`macro_by_corpus`)."""
    out = []
    for src in labels:
        m = macro[(macro["source"] == src) & (macro["k"] == 1)]
        if len(m):
            out.append(f"**{labels[src]}** ({src}): P@1 " + ", ".join(f"{r.corpus} {r.value:.3f}" for r in m.itertuples()) + ".")
        n = neg_macro[(neg_macro["source"] == src) & (neg_macro["metric"] == "same top-1 as original")]
        base = neg_macro[(neg_macro["source"] == src) & (neg_macro["metric"] == "two facts share top-1 (baseline)")]
        if len(n):
            line = (f"{labels[src]}: the negated query keeps the original top-1 answer for "
                    + ", ".join(f"{r.corpus} {r.value:.0%}" for r in n.itertuples()) + " of facts")
            if len(base):
                line += ("; but two *different* facts of a relation already share their top-1 answer "
                         + ", ".join(f"{r.corpus} {r.value:.0%}" for r in base.itertuples())
                         + " of the time, so overlap near that level means the answer ignores the subject, not just 'not'")
            out.append(line + ".")
        if spearman_macro is not None:
            sp = spearman_macro[spearman_macro["source"] == src]
            if len(sp):
                out.append(f"{labels[src]}: Spearman correlation of the original and negated queries' predictions over "
                           "the candidate vocabulary (Kassner & Schütze's ρ; 1 = negation changes nothing) "
                           + ", ".join(f"{r.corpus} {r.value:.2f}" for r in sp.itertuples()) + ".")
    return out


def forbes_keys(task_data: dict[str, tuple[pd.DataFrame, pd.DataFrame]], root=None) -> dict[str, str]:
    """Every object uid, property uid and affordance verb used by the tasks, mapped to the text
    that is embedded for it (see :func:`forbes_texts`)."""
    objs, props = forbes_texts(root)
    texts: dict[str, str] = {}
    for task, (train, test) in task_data.items():
        kind_a, kind_b = TASK_CATEGORIES[task]
        for kind, col in ((kind_a, "a"), (kind_b, "b")):
            for key in pd.unique(pd.concat([train[col], test[col]])):
                if kind == "object":
                    texts[key] = objs.get(key, key.replace("_", " "))
                elif kind == "property":
                    texts[key] = props[key]
                else:
                    texts[key] = key
    return texts


def forbes_embeddings(loaded, texts: dict[str, str], batch_size: int = 64, progress: bool = True) -> dict[str, np.ndarray]:
    """``key -> [layers + 1, D]`` embeddings of :func:`forbes_keys` texts (see :func:`embed_texts`)."""
    keys = list(texts)
    emb = embed_texts(loaded, [texts[k] for k in keys], batch_size=batch_size, progress=progress)
    return dict(zip(keys, emb))


def subsample_pairs(task_data: dict[str, tuple[pd.DataFrame, pd.DataFrame]], max_train: int | None,
                    max_test: int | None, seed: int = 0) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """At most ``max_train`` / ``max_test`` pairs per task (``None``: all, as the authors), drawn
    with ``seed`` in the authors' pair order (quick runs: fewer pairs, fewer words to embed)."""
    rng = np.random.default_rng(seed)

    def take(df, n):
        if n is None or len(df) <= n:
            return df
        return df.iloc[np.sort(rng.choice(len(df), n, replace=False))].reset_index(drop=True)

    return {t: (take(tr, max_train), take(te, max_test)) for t, (tr, te) in task_data.items()}


# ----------------------------------------------------------------------------- notebook 07 helpers


def load_facts(data: str = "auto", conceptnet_by_predicate: bool = False) -> tuple[pd.DataFrame, str, str, str | None]:
    """The LAMA facts notebook 07 scores: Kassner & Schütze's release when it can be had
    (``data="auto"``), else bertology's own fact set. Returns ``(facts, description, lama_data,
    note)``; ``note`` says why the own set stands in (None when the release was used)."""
    from .data import DataUnavailableError

    if data not in ("auto", "shipped"):
        raise ValueError(f"data must be 'auto' or 'shipped', got {data!r}")
    try:
        if data == "shipped":
            raise DataUnavailableError("data='shipped' asked for")
        facts = load_lama(conceptnet_by_predicate=conceptnet_by_predicate)
        return facts, "LAMA subset (Kassner & Schütze 2020 release)", KASSNER_RELEASE, None
    except DataUnavailableError as exc:
        note = (f"The LAMA data is not available here ({str(exc).splitlines()[0]}); the factual cloze runs on a small "
                "fact set written for bertology (data/stimuli/facts.jsonl). Numbers are not comparable with LAMA's.")
        return load_own_facts(), "bertology's own fact set", "bertology's own fact set", note


def probe_layers(n_layers: int, n: int) -> list[int]:
    """``n`` evenly spaced hidden-state layers from 0 (embeddings) to ``n_layers`` (last), both
    included; ``n = 1``: the last layer only."""
    if n <= 1:
        return [n_layers]
    return sorted({int(round(x)) for x in np.linspace(0, n_layers, n)})


def majority_scores(task_data: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Forbes's majority-by-category baseline scored on each task's test pairs:
    ``[task, category, value]`` (macro F1 per category, plus ``micro``)."""
    rows = []
    for t, (tr, te) in task_data.items():
        s = forbes_f1(te["a"], te["b"], te["label"], majority_baseline(tr, te), TASK_CATEGORIES[t])
        rows += [dict(task=t, category=c, value=s[c]) for c in (*TASK_CATEGORIES[t], "micro")]
    return pd.DataFrame(rows)


def system_names(model_name: str) -> dict[str, str]:
    """The ``system`` names of the Forbes tables for the probe sources ``probe`` and ``control``."""
    return {"probe": f"probe on {model_name} (frozen)", "control": "probe on random-init control"}


def forbes_table(best: pd.DataFrame, majority: pd.DataFrame, humans: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """One table of Forbes scores by ``system``: the probes' best layers (:func:`best_layer_scores`),
    the majority baseline (:func:`majority_scores`) and the human experts (:func:`human_scores`);
    ``layer`` is NaN for the systems that read no layer."""
    names = system_names(model_name)
    return pd.concat([best.assign(system=best["source"].map(names)).drop(columns=["source", "n"]),
                      majority.assign(system="majority", layer=np.nan),
                      humans.drop(columns="n").assign(system="human", layer=np.nan)], ignore_index=True)


def forbes_findings(forbes: pd.DataFrame, model_name: str, margin: float = 0.05) -> dict:
    """The Forbes verdict of this run (:func:`forbes_verdict` of the probe against the majority
    baseline, with the random-init control probe as ``control_gains``)."""
    names = system_names(model_name)
    return forbes_verdict(forbes_gains(forbes, names["probe"]), margin=margin,
                          control_gains=forbes_gains(forbes, names["control"]))


def forbes_text(v: dict, model_name: str, margin: float = 0.05) -> list[str]:
    """Markdown bullets for a :func:`forbes_findings` verdict."""
    out = [f"Physical commonsense, probe on frozen {model_name} (layer chosen on validation): macro F1 above the "
           f"majority baseline by {v['gain_op_oa']:+.2f} on average for object-property and object-affordance, by "
           f"{v['gain_ap']:+.2f} for affordance-property; above the same probe on the random-init control by "
           f"{v['over_control_op_oa']:+.2f} (OP/OA) and {v['over_control_ap']:+.2f} (AP).",
           f"Distance to the human experts: {v['shortfall_op_oa']:.2f} macro F1 below on OP/OA, "
           f"{v['shortfall_ap']:.2f} below on AP."]
    if v["pattern_vs_control"]:
        out.append("What the pretrained representations add over a random encoder is in properties and affordances, "
                   "**not in the affordance-property relation** (AP is no better than the control): Forbes et al.'s pattern.")
    else:
        out.append("Measured against the random-init control, the relation (AP) is **not** clearly less learnable than "
                   "properties and affordances in this run"
                   + (" (both gain little over the control)." if v["over_control_op_oa"] <= margin else "."))
    return out


def key_numbers(macro: pd.DataFrame, source: str, verdict: dict | None = None) -> dict[str, float]:
    """Notebook 07's headline numbers: T-REx P@1 of ``source`` (when scored) and, with a Forbes
    ``verdict``, the probe's gain over the control on OP/OA and on AP."""
    out = {}
    if verdict is not None:
        out["Forbes OP/OA: probe minus control (macro F1)"] = verdict["over_control_op_oa"]
        out["Forbes AP: probe minus control (macro F1)"] = verdict["over_control_ap"]
    k1 = macro[(macro["k"] == 1) & (macro["source"] == source) & (macro["corpus"] == "T-REx")]
    if len(k1):
        out[f"T-REx P@1 ({source})"] = float(k1["value"].iloc[0])
    return out


def forbes_data(max_train_pairs: int | None = None, max_test_pairs: int | None = None, seed: int = 0,
                root: str | Path | None = None) -> tuple[dict[str, tuple[pd.DataFrame, pd.DataFrame]], dict]:
    """Forbes et al.'s four tasks as (train, test) pairs, capped by :func:`subsample_pairs`, and the
    caps that actually cut pairs (``{"max_train_pairs": n or None, "max_test_pairs": ...}``, for the
    report header). :class:`~bertology.data.DataUnavailableError` when the data cannot be had."""
    full = {t: load_forbes(t, root) for t in TASKS}
    task_data = subsample_pairs(full, max_train_pairs, max_test_pairs, seed)
    capped = [any(len(task_data[t][i]) < len(full[t][i]) for t in TASKS) for i in (0, 1)]
    return task_data, {"max_train_pairs": max_train_pairs if capped[0] else None,
                       "max_test_pairs": max_test_pairs if capped[1] else None}


def forbes_probes(loaded, task_data: dict[str, tuple[pd.DataFrame, pd.DataFrame]], layers: Sequence[int],
                  seed: int = 0, batch_size: int = 64) -> pd.DataFrame:
    """:func:`probe_forbes` on every task, on the frozen model (``source="probe"``) and on its
    random-init control (``source="control"``, seeded with ``seed``), at ``layers``."""
    from .models import random_init_control

    texts = forbes_keys(task_data)
    embeddings = {"probe": forbes_embeddings(loaded, texts, batch_size=batch_size)}
    control = random_init_control(loaded, seed=seed)
    embeddings["control"] = forbes_embeddings(control, texts, batch_size=batch_size)
    del control
    return pd.concat([probe_forbes(e, t, *task_data[t], layers=layers, source=src, seed=seed)
                      for src, e in embeddings.items() for t in TASKS], ignore_index=True)


# ----------------------------------------------------------------------------- notebook 07: one function a section


@dataclass
class LamaFacts:
    """:func:`lama_facts`: the facts scored (single-piece objects, sampled per relation), the
    candidate vocabulary and the counts of facts kept and dropped per relation
    (:func:`single_piece_facts`)."""

    facts: pd.DataFrame
    vocab: list[str]
    counts: pd.DataFrame


def lama_facts(run, data: str = "auto", facts_per_relation: int = 30, conceptnet_by_predicate: bool = False) -> LamaFacts:
    """Notebook 07's LAMA facts (:func:`load_facts` of ``data``): those whose object is one word
    piece of the candidate vocabulary of ``run.loaded`` (:func:`candidate_vocab`), at most
    ``facts_per_relation`` per relation drawn with ``run.seed``. Records on ``run``
    (:class:`bertology.notebook.Run`) the note when the own fact set stands in, the candidate
    vocabulary size, the note on dropped facts, the methods ``petroni.lama`` and
    ``kassner.negated``, the sampling deviation when facts were left out and the data line; the
    counts table is left to the caller."""
    facts_all, origin, lama_data, missing = load_facts(data, conceptnet_by_predicate)
    if missing:
        run.note(missing)
    tok = run.loaded.tokenizer
    vocab = candidate_vocab(tok)
    kept, counts = single_piece_facts(facts_all, tok, vocab)
    facts = sample_facts(kept, facts_per_relation, run.seed)
    run.value("lama_candidate_vocab_size", len(vocab))
    run.note(f"LAMA: {int(counts['n_dropped'].sum())} of {int(counts['n_facts'].sum())} facts dropped because the object "
             "is not a single word piece of the model's vocabulary.")
    run.method("petroni.lama", lama_data=lama_data, conceptnet_by_predicate=conceptnet_by_predicate, candidates=len(vocab))
    run.method("kassner.negated", candidates=len(vocab))
    if len(facts) < len(kept):
        run.deviation(f"Data: {facts_per_relation} facts per relation drawn with seed {run.seed} ({len(facts)} of "
                      f"{len(kept)} usable facts).")
    run.set_data(f"{origin}; Forbes et al. (2019) physical commonsense", lama_facts=len(facts),
                 lama_relations=int(facts.groupby(["corpus", "relation"]).ngroups))
    return LamaFacts(facts, vocab, counts)


def lama_study(scorers: Sequence, facts: pd.DataFrame, vocab: Sequence[str] | None = None, k: int = 10,
               batch_size: int = 64) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Notebook 07, factual recall: :func:`score_lama` of ``facts`` by every scorer; returns the
    top-``k`` answers of all scorers and the report's tables by name: ``lama_ranks``,
    ``lama_precision_per_relation`` (:func:`precision_at_k`, P@1 and P@10) and ``lama_precision``
    (:func:`macro_by_corpus`)."""
    ranks, tops = zip(*(score_lama(s, facts, vocab=vocab, k=k, batch_size=batch_size) for s in scorers))
    ranks, tops = pd.concat(ranks, ignore_index=True), pd.concat(tops, ignore_index=True)
    per_relation = precision_at_k(ranks, ks=(1, 10))
    return tops, {"lama_ranks": ranks, "lama_precision_per_relation": per_relation,
                  "lama_precision": macro_by_corpus(per_relation)}


def example_answers(tops: pd.DataFrame, facts: pd.DataFrame, per_corpus: int = 2) -> pd.DataFrame:
    """The first ``per_corpus`` facts of every corpus (``corpus, original, obj_label`` by ``uuid``)
    with each source's first answer to the original query (one column per source; NaN where a
    source has none)."""
    t1 = tops[(tops["rank"] == 1) & (tops["query"] == "original")].pivot_table(
        index="uuid", columns="source", values="token", aggfunc="first")
    return facts.groupby("corpus").head(per_corpus).set_index("uuid")[["corpus", "original", "obj_label"]].join(t1, how="left")


def negation_study(tops: pd.DataFrame, ranks: pd.DataFrame, facts: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Notebook 07, negated and misprimed queries (Kassner & Schütze 2020), the report's tables by
    name: ``negation_per_relation`` (:func:`negation_overlap`), ``negation`` (its
    :func:`macro_by_corpus`), ``negation_spearman_per_relation`` (:func:`negation_spearman`) and
    ``negation_spearman`` (its macro average)."""
    neg, rho = negation_overlap(tops, facts), negation_spearman(ranks)
    return {"negation_per_relation": neg, "negation": macro_by_corpus(neg, value="value"),
            "negation_spearman_per_relation": rho, "negation_spearman": macro_by_corpus(rho, value="value")}


@dataclass
class ForbesStudy:
    """:func:`forbes_study`: the (train, test) pairs of every task, the layers probed, every probe
    score (:func:`forbes_probes`) and the scores by system (:func:`forbes_table`)."""

    task_data: dict[str, tuple[pd.DataFrame, pd.DataFrame]]
    layers: list[int]
    probe: pd.DataFrame
    scores: pd.DataFrame


def forbes_study(run, max_train_pairs: int | None = None, max_test_pairs: int | None = None, n_probe_layers: int = 4,
                 batch_size: int = 64, root: str | Path | None = None) -> ForbesStudy | None:
    """Notebook 07, physical commonsense (Forbes et al. 2019): :func:`forbes_data` (capped, seeded
    with ``run.seed``; ``root``: the data folder, None for the data mirror) probed by
    :func:`forbes_probes` on :func:`probe_layers` of ``run.loaded`` (``n_probe_layers``), scored
    against the majority baseline and the human experts. None when the data cannot be had (with a
    note on ``run``) or holds no task. Records on ``run`` (:class:`bertology.notebook.Run`) the
    method ``forbes.physical`` with the caps that cut pairs, the number of test pairs and the layers
    probed; the tables are left to the caller."""
    from .data import DataUnavailableError

    try:
        task_data, caps = forbes_data(max_train_pairs, max_test_pairs, run.seed, root)
        run.method("forbes.physical", **caps)
    except DataUnavailableError as exc:
        run.note(f"Forbes et al.'s physical-commonsense data is not available here ({str(exc).splitlines()[0]}); "
                 "that part is skipped.")
        return None
    if not task_data:
        return None
    layers = probe_layers(run.info.n_layers, n_probe_layers)
    probe = forbes_probes(run.loaded, task_data, layers, seed=run.seed, batch_size=batch_size)
    scores = forbes_table(best_layer_scores(probe), majority_scores(task_data), human_scores(root), run.info.name)
    run.set_data(run.meta["data"], forbes_pairs_test=int(sum(len(te) for _, te in task_data.values())))
    run.value("forbes_probe_layers", layers)
    return ForbesStudy(task_data, layers, probe, scores)
