"""Minimal pairs: subject–verb agreement (Goldberg 2019) and BLiMP (Warstadt et al. 2020) with PLL.

Both ask a masked LM to prefer the grammatical member of a pair (Rogers et al. 2020, §3.1):

* **Agreement** (Goldberg 2019, "Assessing BERT's syntactic abilities", §2–3): mask the verb of a
  sentence and compare the scores of the correct and the wrong verb form at the mask; the item is
  right when ``log p(correct) > log p(wrong)`` (Goldberg's ``eval_bert.py`` compares the two
  logits, the same order). As in Goldberg, both forms must be single word pieces; other items are
  skipped and counted with the reason. By default his item selection is applied
  (:func:`goldberg_selection`). Data: the "colorless green" English set of
  Gulordava et al. (2018) (41 original sentences + 369 nonce variants) and the Linzen et al. (2016)
  subset distributed with it (7,489 Wikipedia sentences), both with attractor counts; offline, ~40
  hand-written items of ours (``data/stimuli/agreement_pairs.tsv``).
* **BLiMP**: each sentence is scored by its pseudo-log-likelihood (Salazar et al. 2020, §2.1, see
  :func:`bertology.cloze.pll`); a pair is right when ``PLL(good) > PLL(bad)``; accuracy per paradigm
  (67 UIDs), the 12 phenomenon groups of Salazar et al.'s ``mlm-scoring`` (mean of the paradigm
  accuracies; BLiMP's own 13 ``linguistics_term`` values as an option) and field. Offline: hand-written pairs of
  ours covering the same phenomena (``data/stimuli/blimp_like.tsv``).

Every scored table carries ``source`` / ``scorer`` columns (the :class:`~bertology.cloze.Scorer`'s
``source`` and ``label``), so a fitted readout or random-init control is never reported as the
model's MLM head.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cloze import MASK, Scorer, cloze, pll, word_pieces
from .fidelity import declare, option_differs

log = logging.getLogger(__name__)

STUDIES = ("goldberg.agreement", "blimp.pll")
_YG = "yoavg/bert-syntax"
_MLMS = "awslabs/mlm-scoring examples/lingacc-blimp/accuracy.py"

#: Goldberg's selection rules (``yoavg/bert-syntax``): on Gulordava et al.'s set he skips the items
#: whose correct form is "is" or "are" (``eval_bert.py``, ``eval_gulordava``); on the Linzen et al.
#: set he keeps sentences with 1-4 attractors whose every intervening noun is an attractor
#: (``make_linzen_goldberg_testset.py``: ``n_intervening == n_diff_intervening``), is/are kept.
GOLDBERG_SKIP_FORMS = ("is", "are")
GOLDBERG_ATTRACTORS = (1, 2, 3, 4)
AGREEMENT_SELECTIONS = ("goldberg", "all")

declare("goldberg.agreement", "linzen_data",
        "Linzen et al. set: Gulordava et al.'s 7,489-sentence subset (colorlessgreenRNNs "
        "data/linzen_testset), not Goldberg's selection from agr_50_mostcommon_10K.tsv, which we do not "
        "have; his 1-4 attractor rule is applied, but his 'every intervening noun is an attractor' rule "
        "cannot be (the subset has no count of intervening nouns).", kind="data",
        reference=f"{_YG} make_linzen_goldberg_testset.py")
declare("goldberg.agreement", "selection",
        "All agreement items are scored (ours); Goldberg skips the is/are items of Gulordava et al.'s set and "
        "keeps only 1-4 attractor sentences of the Linzen et al. set.", kind="option",
        when=option_differs("agreement_selection", "goldberg"),
        reference=f"{_YG} eval_bert.py (eval_gulordava), make_linzen_goldberg_testset.py")
declare("goldberg.agreement", "case",
        "Gulordava et al.'s sentences are given to the tokenizer as written; Goldberg lower-cased them first "
        "(no difference for an uncased model, such as the ones he ran).",
        reference=f"{_YG} eval_bert.py (read_gulordava)")
BLIMP_GROUPINGS = ("mlm-scoring", "linguistics_term")
declare("blimp.pll", "grouping",
        "BLiMP phenomena grouped by the data's own linguistics_term (13 groups, s-selection apart); Salazar "
        "et al.'s mlm-scoring uses 12 groups, with the two animate_subject paradigms inside argument "
        "structure.", kind="option", when=option_differs("blimp_grouping", "mlm-scoring"), reference=_MLMS)

#: The 12 phenomenon groups of Salazar et al.'s BLiMP accuracy script (``awslabs/mlm-scoring``,
#: ``examples/lingacc-blimp/accuracy.py``): group name -> paradigm UIDs. Unlike BLiMP's own
#: ``linguistics_term`` it has no ``s-selection`` group: ``animate_subject_passive`` and
#: ``animate_subject_trans`` are in ``argument_structure``.
MLM_SCORING_GROUPS = {
    "anaphor_agreement": ("anaphor_gender_agreement", "anaphor_number_agreement"),
    "argument_structure": ("animate_subject_passive", "animate_subject_trans", "causative", "drop_argument",
                           "inchoative", "intransitive", "passive_1", "passive_2", "transitive"),
    "binding": ("principle_A_c_command", "principle_A_case_1", "principle_A_case_2", "principle_A_domain_1",
                "principle_A_domain_2", "principle_A_domain_3", "principle_A_reconstruction"),
    "control_raising": ("existential_there_object_raising", "existential_there_subject_raising",
                        "expletive_it_object_raising", "tough_vs_raising_1", "tough_vs_raising_2"),
    "determiner_noun_agreement": ("determiner_noun_agreement_1", "determiner_noun_agreement_2",
                                  "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2",
                                  "determiner_noun_agreement_with_adjective_1", "determiner_noun_agreement_with_adj_2",
                                  "determiner_noun_agreement_with_adj_irregular_1",
                                  "determiner_noun_agreement_with_adj_irregular_2"),
    "ellipsis": ("ellipsis_n_bar_1", "ellipsis_n_bar_2"),
    "filler_gap": ("wh_questions_object_gap", "wh_questions_subject_gap", "wh_questions_subject_gap_long_distance",
                   "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance", "wh_vs_that_with_gap",
                   "wh_vs_that_with_gap_long_distance"),
    "irregular_forms": ("irregular_past_participle_adjectives", "irregular_past_participle_verbs"),
    "island_effects": ("adjunct_island", "complex_NP_island", "coordinate_structure_constraint_complex_left_branch",
                       "coordinate_structure_constraint_object_extraction", "left_branch_island_echo_question",
                       "left_branch_island_simple_question", "sentential_subject_island", "wh_island"),
    "npi_licensing": ("matrix_question_npi_licensor_present", "npi_present_1", "npi_present_2",
                      "only_npi_licensor_present", "only_npi_scope", "sentential_negation_npi_licensor_present",
                      "sentential_negation_npi_scope"),
    "quantifiers": ("existential_there_quantifiers_1", "existential_there_quantifiers_2",
                    "superlative_quantifiers_1", "superlative_quantifiers_2"),
    "subject_verb_agreement": ("distractor_agreement_relational_noun", "distractor_agreement_relative_clause",
                               "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
                               "regular_plural_subject_verb_agreement_1", "regular_plural_subject_verb_agreement_2"),
}
_UID_GROUP = {uid: g for g, uids in MLM_SCORING_GROUPS.items() for uid in uids}


def mlm_scoring_group(paradigm: str) -> str:
    """The mlm-scoring group of a BLiMP paradigm UID (raises on an unknown UID, as their script logs)."""
    try:
        return _UID_GROUP[paradigm]
    except KeyError:
        raise ValueError(f"BLiMP paradigm {paradigm!r} is in none of mlm-scoring's 12 groups") from None

STIMULI = Path(__file__).with_name("data") / "stimuli"
GULORDAVA = ("colorlessgreen-agreement", "data/agreement/English/generated.tab")
LINZEN_TEXT = ("colorlessgreen-agreement", "data/linzen_testset/subj_agr_filtered.text")
LINZEN_GOLD = ("colorlessgreen-agreement", "data/linzen_testset/subj_agr_filtered.gold")

def blimp_paradigms() -> list[str]:
    """The 67 BLiMP paradigms (file stems of ``blimp/data/*.jsonl``), from the data registry."""
    from .data import dataset_info

    return [f[len("data/"):-len(".jsonl")] for f in dataset_info("blimp")["files"]
            if f.startswith("data/") and f.endswith(".jsonl")]


#: Reference numbers (reference, not target), each with where it was found.
REFERENCE = {
    "blimp_overall": [
        {"model": "roberta-large (PLL)", "accuracy": 0.865,
         "source": "Salazar et al. 2020 code release, awslabs/mlm-scoring examples/lingacc-blimp/README.md"},
        {"model": "gpt2-medium 345M (log-prob)", "accuracy": 0.826,
         "source": "Salazar et al. 2020 code release, awslabs/mlm-scoring examples/lingacc-blimp/README.md"},
        {"model": "human", "accuracy": 0.886,
         "source": "awslabs/mlm-scoring examples/lingacc-blimp/README.md (from Warstadt et al. 2020)"},
    ],
    # Goldberg (2019) on Gulordava et al.'s set, counted from his committed per-item outputs
    # (one True/False line per scored item; 27 of 410 items skipped: 14 is/are, 13 forms not in the
    # vocabulary). His Linzen-set outputs (results/lgd_results_*.txt) are absent from the snapshot
    # we could read, so no Linzen numbers are printed.
    "agreement": [
        {"model": f"bert-{m}-uncased", "dataset": "gulordava", "n_attractors": k, "accuracy": acc, "n": n,
         "source": f"authors' code output: yoavg/bert-syntax results/gulordava_results_{m}.txt (counted)"}
        for m, rows in (("base", [("all", 319, 383), (0, 260, 311), (1, 51, 63), (2, 8, 9)]),
                        ("large", [("all", 305, 383), (0, 250, 311), (1, 47, 63), (2, 8, 9)]))
        for k, right, n in rows for acc in [round(right / n, 3)]
    ],
}


# --------------------------------------------------------------------------- agreement data

_ITEM_COLUMNS = ["dataset", "item_id", "condition", "n_attractors", "context", "correct", "wrong"]


def _context(words: Sequence[str], i: int) -> str:
    return " ".join(list(words[:i]) + [MASK] + list(words[i + 1:]))


def load_gulordava(limit: int | None = None) -> pd.DataFrame:
    """Gulordava et al. (2018) English agreement set: one row per (sentence, correct form, wrong form).

    ``condition`` is ``original`` (41 natural sentences) or ``generated`` (nonce variants); the verb at
    word ``len_prefix`` is masked and the whole sentence (right context too) is kept, as in Goldberg.
    Raises :class:`bertology.data.DataUnavailableError` when the data cannot be had.
    """
    from .data import data_path

    tab = pd.read_csv(data_path(*GULORDAVA), sep="\t", dtype=str, keep_default_na=False)
    need = {"pattern", "constr_id", "sent_id", "form", "class", "type", "n_attr", "len_prefix", "sent"}
    if missing := need - set(tab.columns):
        raise ValueError(f"{GULORDAVA[1]} lacks columns {sorted(missing)}")
    rows = []
    for key, g in tab.groupby(["pattern", "constr_id", "sent_id", "type"], sort=False):
        good, bad = g[g["class"] == "correct"], g[g["class"] == "wrong"]
        if len(good) != 1 or len(bad) != 1:
            raise ValueError(f"{GULORDAVA[1]}: item {key} has {len(good)} correct and {len(bad)} wrong forms")
        r = good.iloc[0]
        words = [w for w in r["sent"].split() if w != "<eos>"]
        i = int(r["len_prefix"])
        rows.append({"dataset": "gulordava", "item_id": f"{r['pattern']}/{r['constr_id']}/{r['sent_id']}/{r['type']}",
                     "condition": r["type"], "n_attractors": int(r["n_attr"]), "context": _context(words, i),
                     "correct": r["form"], "wrong": bad.iloc[0]["form"]})
    df = pd.DataFrame(rows, columns=_ITEM_COLUMNS)
    return df.head(limit).reset_index(drop=True) if limit else df


def load_linzen(limit: int | None = None) -> pd.DataFrame:
    """The Linzen et al. (2016) subset distributed by Gulordava et al.: line-aligned ``.text`` and ``.gold``
    (target index, correct form, wrong form, attractors); sentences are lower-cased Wikipedia text."""
    from .data import data_path

    text = data_path(*LINZEN_TEXT).read_text(encoding="utf-8").splitlines()
    gold = data_path(*LINZEN_GOLD).read_text(encoding="utf-8").splitlines()
    if len(text) != len(gold):
        raise ValueError(f"Linzen test set: {len(text)} sentences but {len(gold)} gold lines")
    rows = []
    for n, (t, g) in enumerate(zip(text, gold)):
        if limit and len(rows) >= limit:
            break
        f = g.split("\t")
        if len(f) != 4:
            raise ValueError(f"{LINZEN_GOLD[1]} line {n + 1}: expected 4 tab-separated fields, got {len(f)}")
        words = [w for w in t.split() if w != "<eos>"]
        i = int(f[0])
        if not 0 <= i < len(words) or words[i].lower() != f[1].lower():
            raise ValueError(f"{LINZEN_GOLD[1]} line {n + 1}: word {i} is {words[i] if i < len(words) else None!r}, "
                             f"not the correct form {f[1]!r}")
        rows.append({"dataset": "linzen", "item_id": str(n), "condition": "natural", "n_attractors": int(f[3]),
                     "context": _context(words, i), "correct": f[1], "wrong": f[2]})
    return pd.DataFrame(rows, columns=_ITEM_COLUMNS)


def load_agreement_stimuli(path: str | Path | None = None) -> pd.DataFrame:
    """Our hand-written agreement items (TSV: condition, n_attractors, context with [MASK], correct, wrong)."""
    path = Path(path) if path else STIMULI / "agreement_pairs.tsv"
    df = pd.read_csv(path, sep="\t", comment="#", dtype={"n_attractors": int})
    need = ["condition", "n_attractors", "context", "correct", "wrong"]
    if missing := set(need) - set(df.columns):
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    bad = [i for i, c in enumerate(df["context"]) if c.count(MASK) != 1]
    if bad:
        raise ValueError(f"{path}: rows {bad[:5]} do not contain exactly one {MASK}")
    df.insert(0, "dataset", "bertology-stimuli")
    df.insert(1, "item_id", [str(i) for i in range(len(df))])
    return df[_ITEM_COLUMNS]


def goldberg_selection(items: pd.DataFrame) -> pd.DataFrame:
    """Goldberg's (2019) items of each set (see :data:`GOLDBERG_SKIP_FORMS`): Gulordava items whose
    correct form is "is"/"are" are dropped; Linzen items keep 1-4 attractors and, where the table has
    an ``n_intervening`` column, only those whose every intervening noun is an attractor. Other data
    sets pass unchanged."""
    keep = pd.Series(True, index=items.index)
    gul = items["dataset"] == "gulordava"
    keep &= ~(gul & items["correct"].str.lower().isin(GOLDBERG_SKIP_FORMS))
    lin = items["dataset"] == "linzen"
    keep &= ~(lin & ~items["n_attractors"].isin(GOLDBERG_ATTRACTORS))
    if "n_intervening" in items.columns:
        keep &= ~(lin & (items["n_intervening"] != items["n_attractors"]))
    return items[keep].reset_index(drop=True)


def agreement_items(data: str = "auto", limit: int | None = None,
                    selection: str = "goldberg") -> tuple[pd.DataFrame, list[str]]:
    """Items of the agreement sets and notes for the report.

    ``data="auto"``: Gulordava + Linzen when available, else our stimuli (with a note saying so);
    ``"gulordava"``, ``"linzen"``, ``"stimuli"`` pick one set. ``selection="goldberg"`` applies
    :func:`goldberg_selection` (before ``limit``); ``"all"`` (ours) keeps every item. ``limit``
    caps items per set.
    """
    from .data import DataUnavailableError

    if selection not in AGREEMENT_SELECTIONS:
        raise ValueError(f"selection must be one of {AGREEMENT_SELECTIONS}, not {selection!r}")
    select = goldberg_selection if selection == "goldberg" else (lambda df: df)
    loaders = {"gulordava": lambda n: select(load_gulordava()).head(n) if n else select(load_gulordava()),
               "linzen": lambda n: select(load_linzen()).head(n) if n else select(load_linzen())}
    if data == "stimuli":
        return load_agreement_stimuli().head(limit) if limit else load_agreement_stimuli(), []
    if data not in ("auto", *loaders):
        raise ValueError(f"agreement data must be 'auto', 'gulordava', 'linzen' or 'stimuli', not {data!r}")
    notes, parts = [], []
    for name in (loaders if data == "auto" else [data]):
        try:
            parts.append(loaders[name](limit))
        except DataUnavailableError as exc:
            if data != "auto":
                raise
            notes.append(f"{name} agreement data unavailable ({str(exc).splitlines()[0]})")
    if not parts:
        items = load_agreement_stimuli()
        notes.append(f"using the {len(items)} hand-written agreement items shipped with bertology instead")
        return (items.head(limit) if limit else items), notes
    return pd.concat(parts, ignore_index=True), notes


# --------------------------------------------------------------------------- agreement scoring


def score_agreement(scorer: Scorer, items: pd.DataFrame, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Score each item: log-probabilities of the correct and wrong form at the mask (Goldberg 2019).

    Returns items plus ``logprob_correct, logprob_wrong, right`` (1.0/0.0; NaN when skipped),
    ``skipped`` (reason, "" when scored), ``source`` and ``scorer``. Items whose forms are not single
    word pieces are skipped, as in Goldberg (2019).
    """
    if missing := {"context", "correct", "wrong"} - set(items.columns):
        raise ValueError(f"agreement items lack columns {sorted(missing)}")
    tok = scorer.tokenizer
    reasons = []
    for c, w in zip(items["correct"], items["wrong"]):
        nc, nw = len(word_pieces(tok, c)), len(word_pieces(tok, w))
        if nc > 1 and nw > 1:
            reasons.append("both forms are several word pieces")
        elif nc > 1:
            reasons.append("correct form is several word pieces")
        elif nw > 1:
            reasons.append("wrong form is several word pieces")
        elif word_pieces(tok, c) == word_pieces(tok, w):
            reasons.append("forms are the same word piece")
        else:
            reasons.append("")
    out = items.reset_index(drop=True).copy()
    out["skipped"] = reasons
    keep = np.flatnonzero(out["skipped"] == "")
    out["logprob_correct"] = np.nan
    out["logprob_wrong"] = np.nan
    if len(keep):
        sub = out.iloc[keep]
        res = cloze(scorer, sub["context"].tolist(), [[c, w] for c, w in zip(sub["correct"], sub["wrong"])],
                    k=0, multi_piece="skip", batch_size=batch_size, progress=progress)
        t = res.targets
        lp = t["logprob"].to_numpy().reshape(-1, 2)
        out.loc[keep, "logprob_correct"] = lp[:, 0]
        out.loc[keep, "logprob_wrong"] = lp[:, 1]
    out["right"] = np.where(out["skipped"] == "", (out["logprob_correct"] > out["logprob_wrong"]).astype(float), np.nan)
    out["source"], out["scorer"] = scorer.source, scorer.label
    n_skip = int((out["skipped"] != "").sum())
    if n_skip:
        log.info("agreement: %d of %d items skipped (forms not single word pieces)", n_skip, len(out))
    return out


def agreement_accuracy(scored: pd.DataFrame, by: Sequence[str] = ("dataset", "condition", "n_attractors")) -> pd.DataFrame:
    """Accuracy per group (tidy): [*by, source, scorer, accuracy, n, n_skipped]; skipped items are not in ``n``."""
    by = list(by)
    keys = by + ["source", "scorer"]
    g = scored.groupby(keys, dropna=False, sort=True)
    out = g.agg(accuracy=("right", "mean"), n=("right", "count"),
                n_skipped=("skipped", lambda s: int((s != "").sum()))).reset_index()
    return out


def skip_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """How many items were skipped, per data set and reason: [dataset, reason, n, share]."""
    total = scored.groupby("dataset").size()
    skipped = scored[scored["skipped"] != ""]
    if skipped.empty:
        return pd.DataFrame({"dataset": pd.Series(dtype=object), "reason": pd.Series(dtype=object),
                             "n": pd.Series(dtype=int), "share": pd.Series(dtype=float)})
    s = skipped.groupby(["dataset", "skipped"]).size().rename("n").reset_index()
    s = s.rename(columns={"skipped": "reason"})
    s["share"] = s["n"] / s["dataset"].map(total).astype(float)
    return s


# --------------------------------------------------------------------------- BLiMP

_PAIR_COLUMNS = ["paradigm", "phenomenon", "field", "pair_id", "good", "bad"]


def load_blimp(paradigms: Sequence[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """BLiMP pairs: [paradigm (UID), phenomenon (linguistics_term), field, pair_id, good, bad].

    ``limit`` keeps the first ``limit`` pairs of each paradigm. The field spelled ``syntax/semantics``
    in one file is normalised to ``syntax_semantics``.
    """
    from .data import data_path

    known = blimp_paradigms()
    paradigms = known if paradigms is None else list(paradigms)
    if unknown := [p for p in paradigms if p not in known]:
        raise ValueError(f"unknown BLiMP paradigms {unknown[:5]}; known: {', '.join(known[:5])}, ... ({len(known)})")
    rows = []
    for p in paradigms:
        with open(data_path("blimp", f"data/{p}.jsonl"), encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if limit is not None and n >= limit:
                    break
                r = json.loads(line)
                rows.append({"paradigm": r["UID"], "phenomenon": r["linguistics_term"],
                             "field": r["field"].replace("/", "_"), "pair_id": int(r["pairID"]),
                             "good": r["sentence_good"], "bad": r["sentence_bad"]})
    return pd.DataFrame(rows, columns=_PAIR_COLUMNS)


def load_blimp_stimuli(path: str | Path | None = None) -> pd.DataFrame:
    """Our hand-written BLiMP-style pairs (TSV: phenomenon, paradigm, good, bad), same columns as :func:`load_blimp`."""
    path = Path(path) if path else STIMULI / "blimp_like.tsv"
    df = pd.read_csv(path, sep="\t", comment="#", dtype=str)
    if missing := {"phenomenon", "paradigm", "good", "bad"} - set(df.columns):
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    df["field"] = "bertology-stimuli"
    df["pair_id"] = df.groupby("paradigm").cumcount()
    return df[_PAIR_COLUMNS]


def blimp_pairs(data: str = "auto", paradigms: Sequence[str] | None = None,
                limit: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """BLiMP pairs (``data="auto"`` falls back to our stimuli offline, with a note) and notes."""
    from .data import DataUnavailableError

    if data == "stimuli":
        return load_blimp_stimuli(), []
    if data not in ("auto", "blimp"):
        raise ValueError(f"BLiMP data must be 'auto', 'blimp' or 'stimuli', not {data!r}")
    try:
        return load_blimp(paradigms, limit), []
    except DataUnavailableError as exc:
        if data == "blimp":
            raise
        pairs = load_blimp_stimuli()
        return pairs, [f"BLiMP unavailable ({str(exc).splitlines()[0]}); using the {len(pairs)} hand-written "
                       "BLiMP-style pairs shipped with bertology instead"]


def score_blimp(scorer: Scorer, pairs: pd.DataFrame, batch_size: int = 64, progress: bool = True) -> pd.DataFrame:
    """PLL of both sentences of each pair (Salazar et al. 2020) in one batched pass.

    Returns pairs plus ``pll_good, pll_bad, n_pieces_good, n_pieces_bad, right`` (1.0 when
    ``pll_good > pll_bad``), ``source`` and ``scorer``.
    """
    if missing := {"good", "bad"} - set(pairs.columns):
        raise ValueError(f"BLiMP pairs lack columns {sorted(missing)}")
    out = pairs.reset_index(drop=True).copy()
    n = len(out)
    scores = pll(scorer, out["good"].tolist() + out["bad"].tolist(), batch_size=batch_size, progress=progress)
    out["pll_good"], out["pll_bad"] = scores["pll"].to_numpy()[:n], scores["pll"].to_numpy()[n:]
    out["n_pieces_good"], out["n_pieces_bad"] = scores["n_pieces"].to_numpy()[:n], scores["n_pieces"].to_numpy()[n:]
    out["right"] = (out["pll_good"] > out["pll_bad"]).astype(float)
    out["source"], out["scorer"] = scorer.source, scorer.label
    return out


BLIMP_LEVELS = ("paradigm", "group", "phenomenon", "field", "overall")


def blimp_accuracy(scored: pd.DataFrame, by: str = "paradigm") -> pd.DataFrame:
    """Accuracy per ``by``: [level, group, source, scorer, accuracy, n].

    ``paradigm``: share of right pairs of each UID. ``group`` (the default grouping, Salazar et
    al.'s ``mlm-scoring``): the 12 groups of :data:`MLM_SCORING_GROUPS`; ``phenomenon``: BLiMP's
    own ``linguistics_term`` (13, our option); ``field``; ``overall``. Above the paradigm, accuracy
    is the **mean of the paradigms' accuracies**, as mlm-scoring's ``accuracy.py`` averages them
    (the same as pooling pairs when every paradigm has equally many, as the full BLiMP); ``n``
    counts pairs. The stimuli shipped with bertology have no mlm-scoring group: their
    ``phenomenon`` is used as the group.
    """
    if by not in BLIMP_LEVELS:
        raise ValueError(f"by must be one of {BLIMP_LEVELS}, not {by!r}")
    keys = ["source", "scorer"]
    per = (scored.groupby(["paradigm", *keys], sort=True)
                 .agg(accuracy=("right", "mean"), n=("right", "count")).reset_index())
    if by == "paradigm":
        out = per.rename(columns={"paradigm": "group"})
    else:
        first = scored.drop_duplicates("paradigm").set_index("paradigm")
        if by == "group":
            per["level_group"] = [_UID_GROUP.get(p, first.loc[p, "phenomenon"]) for p in per["paradigm"]]
        elif by == "overall":
            per["level_group"] = "all"
        else:
            per["level_group"] = per["paradigm"].map(first[by])
        out = (per.groupby(["level_group", *keys], sort=True)
                  .agg(accuracy=("accuracy", "mean"), n=("n", "sum")).reset_index()
                  .rename(columns={"level_group": "group"}))
    out = out[["group", *keys, "accuracy", "n"]]
    out.insert(0, "level", by)
    return out


# --------------------------------------------------------------------------- notebook 04: tables, findings, text


def check_parameters(agreement_selection: str = "goldberg", blimp_grouping: str = "mlm-scoring") -> None:
    """Notebook 04's agreement and BLiMP parameters: one of :data:`AGREEMENT_SELECTIONS` and one of
    :data:`BLIMP_GROUPINGS`; else a :class:`bertology.notebook.ParameterError` naming the parameter."""
    from .notebook import check_choice

    check_choice("agreement_selection", agreement_selection, AGREEMENT_SELECTIONS)
    check_choice("blimp_grouping", blimp_grouping, BLIMP_GROUPINGS)


def language_note(language: str) -> str:
    """The report note when the treebank of the run is not English: agreement and BLiMP stay English."""
    return (f"Agreement and BLiMP (section 2) are English test sets: for this {language} run they measure the model "
            f"on English, not on {language}.")


def agreement_tables(scored: pd.DataFrame, source: str) -> dict[str, pd.DataFrame]:
    """The agreement tables of a report from :func:`score_agreement` rows of every scorer:
    ``accuracy`` (by data set and number of attractors), ``by_condition`` (by data set and condition)
    and ``skipped`` (:func:`skip_summary` of ``source``'s rows; every scorer skips the same items
    when they share a tokenizer)."""
    return {"accuracy": agreement_accuracy(scored, by=("dataset", "n_attractors")),
            "by_condition": agreement_accuracy(scored, by=("dataset", "condition")),
            "skipped": skip_summary(scored[scored["source"] == source])}


def agreement_under_shuffling(scorer: Scorer, scored: pd.DataFrame, seed: int = 0, batch_size: int = 32,
                              progress: bool = True) -> pd.DataFrame:
    """Agreement of ``scorer`` on its scored items (``scored``: :func:`score_agreement` rows) with the
    context words shuffled and the mask kept in place (:func:`bertology.perturb.shuffle_context`,
    seeded): accuracy by ``dataset, perturbation`` (``intact`` / ``shuffled``) on the same items."""
    from .perturb import shuffle_context

    rng = np.random.default_rng(seed)
    kept = scored[(scored["source"] == scorer.source) & (scored["skipped"] == "")]
    shuffled = kept.assign(context=[shuffle_context(c, rng) for c in kept["context"]], condition="shuffled")
    res = score_agreement(scorer, shuffled, batch_size=batch_size, progress=progress)
    return pd.concat([agreement_accuracy(kept.assign(perturbation="intact"), by=("dataset", "perturbation")),
                      agreement_accuracy(res.assign(perturbation="shuffled"), by=("dataset", "perturbation"))],
                     ignore_index=True)


@dataclass
class AgreementStudy:
    """:func:`agreement_study`: the :func:`score_agreement` rows of every scorer and their
    :func:`agreement_tables` (``accuracy``, ``by_condition``, ``skipped``)."""

    scored: pd.DataFrame
    tables: dict[str, pd.DataFrame]


def agreement_study(run, scorers: Sequence[Scorer], limit: int | None = None, selection: str = "goldberg",
                    batch_size: int = 32, data: str = "auto", progress: bool = True) -> AgreementStudy:
    """Notebook 04, agreement (Goldberg 2019): :func:`agreement_items` of ``data`` (``limit`` items per
    set, ``selection``) scored by every scorer of ``scorers`` (:func:`score_agreement`), tables by the
    first scorer's skips. Records on ``run`` (:class:`bertology.notebook.Run`) the method
    ``goldberg.agreement`` and the data notes; the tables are left to the caller."""
    run.method("goldberg.agreement", agreement_selection=selection)
    items, notes = agreement_items(data, limit=limit, selection=selection)
    for note in notes:
        run.note(note)
    scored = pd.concat([score_agreement(s, items, batch_size=batch_size, progress=progress) for s in scorers],
                       ignore_index=True)
    return AgreementStudy(scored, agreement_tables(scored, scorers[0].source))


def shuffled_agreement(run, scorer: Scorer, scored: pd.DataFrame, batch_size: int = 32,
                       progress: bool = True) -> pd.DataFrame | None:
    """:func:`agreement_under_shuffling` of ``scorer`` (seeded with ``run.seed``) when the model of
    ``run`` has its own MLM head; otherwise None, with a note on ``run`` (a readout's reading of
    shuffled text says nothing about the model)."""
    if not run.info.has_mlm_head:
        run.note("Agreement under perturbation needs the model's own MLM head; skipped for this model.")
        return None
    return agreement_under_shuffling(scorer, scored, seed=run.seed, batch_size=batch_size, progress=progress)


def blimp_study(run, scorers: Sequence[Scorer], limit: int | None = None, grouping: str = "mlm-scoring",
                batch_size: int = 64, data: str = "auto", control_limit: int | None = None,
                progress: bool = True) -> dict[str, pd.DataFrame]:
    """Notebook 04, BLiMP: :func:`blimp_pairs` of ``data`` (at most ``limit`` per paradigm) scored by
    every scorer of ``scorers`` (:func:`score_blimp`), and their :func:`blimp_tables` by
    ``grouping``. A scorer whose source is ``"control"`` (the random-init baseline) scores only
    the first ``control_limit`` of each paradigm's pairs when that is given (a subset of the
    model's pairs; the report says so). Records on ``run`` (:class:`bertology.notebook.Run`) the
    data notes, ``values["blimp_pairs"]`` (:func:`blimp_sizes`, with ``n_pairs_control`` when the
    control is cut) and the method ``blimp.pll``; the tables are left to the caller."""
    pairs, notes = blimp_pairs(data, limit=limit)
    for note in notes:
        run.note(note)
    sizes = blimp_sizes(pairs, limit)
    few = pairs.groupby("paradigm", sort=False).head(control_limit) if control_limit is not None else pairs
    if len(few) < len(pairs) and any(s.source == "control" for s in scorers):
        sizes["n_pairs_control"] = len(few)
        run.note(f"BLiMP: the random-init control scored the first {control_limit} pairs of each paradigm "
                 f"({len(few)} pairs), the model all {len(pairs)}, for CPU time: the control's accuracies rest on fewer pairs.")
    run.value("blimp_pairs", sizes)
    scored = pd.concat([score_blimp(s, few if s.source == "control" else pairs, batch_size=batch_size,
                                    progress=progress) for s in scorers], ignore_index=True)
    run.method("blimp.pll", blimp_grouping=grouping)
    return blimp_tables(scored, grouping)


def blimp_tables(scored: pd.DataFrame, grouping: str = "mlm-scoring") -> dict[str, pd.DataFrame]:
    """:func:`blimp_accuracy` per ``paradigm``, per phenomenon group (``phenomenon``: Salazar et al.'s
    12 groups for ``grouping="mlm-scoring"``, BLiMP's own ``linguistics_term`` for
    ``"linguistics_term"``) and ``overall``."""
    if grouping not in BLIMP_GROUPINGS:
        raise ValueError(f"grouping must be one of {BLIMP_GROUPINGS}, not {grouping!r}")
    return {"paradigm": blimp_accuracy(scored, "paradigm"),
            "phenomenon": blimp_accuracy(scored, "group" if grouping == "mlm-scoring" else "phenomenon"),
            "overall": blimp_accuracy(scored, "overall")}


def blimp_sizes(pairs: pd.DataFrame, per_paradigm: int) -> dict[str, int]:
    """How many BLiMP pairs and paradigms a run scored, and the cap per paradigm it asked for."""
    return {"n_pairs": len(pairs), "n_paradigms": int(pairs["paradigm"].nunique()), "n_per_paradigm": per_paradigm}


def reference_table(name: str) -> pd.DataFrame:
    """One list of :data:`REFERENCE` (``"agreement"`` or ``"blimp_overall"``) as a table marked
    "reference, not target"."""
    if name not in REFERENCE:
        raise ValueError(f"no reference {name!r}; there are {sorted(REFERENCE)}")
    return pd.DataFrame(REFERENCE[name]).assign(note="reference, not target")


def pooled_accuracy(table: pd.DataFrame, source: str) -> float:
    """Accuracy of ``source`` pooled over the rows of an accuracy table (rows weighted by ``n``); NaN without items."""
    t = table[table["source"] == source]
    return float((t["accuracy"] * t["n"]).sum() / t["n"].sum()) if len(t) and t["n"].sum() else float("nan")


def findings(agreement: pd.DataFrame, blimp_overall: pd.DataFrame, shuffled: pd.DataFrame | None = None) -> dict:
    """The agreement and BLiMP numbers of the "what this run shows" cell, per scorer source (the
    random-init control last): its label, agreement accuracy pooled over the rows of ``agreement``
    (:func:`agreement_tables` ``accuracy``) and the number of items, BLiMP overall accuracy and pairs;
    with ``shuffled`` (:func:`agreement_under_shuffling`), intact and shuffled accuracy per data set."""
    out = {"sources": {}}
    overall = blimp_overall.set_index("source")
    pairs = sorted(dict.fromkeys(zip(agreement["source"], agreement["scorer"])), key=lambda p: p[0] == "control")
    for source, label in pairs:  # the control last
        out["sources"][source] = {
            "label": label, "agreement": pooled_accuracy(agreement, source),
            "n_agreement": int(agreement.loc[agreement["source"] == source, "n"].sum()),
            "blimp": float(overall.loc[source, "accuracy"]) if source in overall.index else float("nan"),
            "n_blimp": int(overall.loc[source, "n"]) if source in overall.index else 0}
    if shuffled is not None and len(shuffled):
        by = shuffled.set_index(["dataset", "perturbation"])["accuracy"]
        out["shuffled"] = {d: {"intact": float(by[(d, "intact")]), "shuffled": float(by[(d, "shuffled")])}
                           for d in dict.fromkeys(shuffled["dataset"])}
    return out


def key_numbers(f: dict) -> dict[str, float]:
    """Headline numbers from :func:`findings`, only for the model's own MLM head (never a readout or
    the control: those are not findings about the model)."""
    mlm = f["sources"].get("mlm")
    if mlm is None:
        return {}
    return {"agreement accuracy (MLM head)": mlm["agreement"], "BLiMP accuracy (MLM head)": mlm["blimp"]}


def findings_text(f: dict, model: str) -> list[str]:
    """Markdown lines of :func:`findings`; a model without its own MLM head gets a first line saying
    that none of these numbers is about the model itself."""
    lines = []
    if "mlm" not in f["sources"]:
        lines.append(f"**{model} has no masked-LM head**: agreement and BLiMP could not be measured on the model "
                     "itself; the numbers below are a fitted readout and a random-init control, not findings about "
                     "the model." if "readout" in f["sources"] else
                     f"**{model} has no masked-LM head**: agreement and BLiMP could not be measured on the model "
                     "itself; only the random-init control was scored.")
    for source, s in f["sources"].items():
        what = "the model's MLM head" if source == "mlm" else source
        lines.append(f"**Agreement / BLiMP, {s['label']}** ({what}): agreement accuracy {s['agreement']:.3f} over "
                     f"{s['n_agreement']} items, BLiMP {s['blimp']:.3f} over {s['n_blimp']} pairs.")
    if f.get("shuffled"):
        lines.append("**Agreement with shuffled context words** (mask in place, model MLM head): " + ", ".join(
            f"{d}: {v['intact']:.3f} → {v['shuffled']:.3f}" for d, v in f["shuffled"].items()))
    return lines
