"""Attention heads that track dependency relations (Clark et al. 2019, §4.2, Table 1, Fig. 5).

Definitions (the authors' released code, ``clarkkev/attention-analysis`` ``Syntax_Analysis.ipynb``:
``attn_head_predictor``, ``offset_predictor``, ``evaluate_predictor``):

- **dep->head**: every word ``i`` predicts as its syntactic head the word it attends to most,
  ``argmax_j A[i, j]`` over the words of the sentence, the word itself and [CLS]/[SEP] excluded
  (the diagonal is set to 0 and [CLS]/[SEP] are cut off before the argmax, so ties, including an
  all-zero row, go to the earliest word).
- **head->dep** (the authors' "transpose" mode): every word ``d`` predicts as its head the word
  that attends to ``d`` most, ``argmax_j A[j, d]`` (the argmax over the rows of column ``d``, i.e.
  the same predictor run on ``A.T``). ``head_dep_mode="head_argmax"`` keeps our earlier quantity
  instead (is the head word's own most-attended word ``d``?), under which a head word can be
  right for only one of its dependents.
- **Fixed offsets**: word ``i`` (0-based) predicts ``clip(i + offset + 1, 0, n)`` in CoNLL-U
  numbering, for offsets ``-3..2`` (``range(-3, 3)``, so offset 0 and +3 are the reference's
  choice); an offset running past the start predicts ROOT, past the end the last word.
- **Scoring**: every word is scored, roots and punctuation included; ROOT is never predicted by a
  head, so a root word is always wrong for a head. The "all" row counts every word; the table
  (:func:`best_heads`) leaves out the ``root`` and ``punct`` rows as the authors' table does.
- **Possessives**: a possessor (Stanford ``poss``; here UD ``nmod:poss``) followed by ``'s`` or
  ``s'`` is scored with the prediction of that token (the possessive marker carries the link), as
  in the reference, including its guard (the rule applies only when the possessor's own
  prediction is not the last word).

We run it on Universal Dependencies; the paper used Stanford Dependencies on the WSJ, so relation
names differ (see :data:`UD_TO_STANFORD`). Deviations are declared in :mod:`bertology.fidelity`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .labels import head_label
from .data import Sentence
from .extract import ExtractStats, Item, extract
from .fidelity import declare, option_differs

STUDIES = ("clark.relations",)

DIRECTIONS = ("dep->head", "head->dep")
HEAD_DEP_MODES = ("clark", "head_argmax")
#: The reference's offsets: ``range(-3, 3)`` in ``Syntax_Analysis.ipynb``.
OFFSETS = (-3, -2, -1, 0, 1, 2)
ALL = "all"
#: Rows the reference's Table 1 loop skips (they stay in "all").
NOT_IN_TABLE = ("root", "punct")
#: Relation whose dependent is scored through a following possessive marker (UD name of SD poss).
POSS = "nmod:poss"
POSSESSIVE_MARKERS = ("'s", "s'")

declare("clark.relations", "ud",
        "Universal Dependencies (UD relations mapped to Stanford labels where they correspond: obj=dobj, "
        "compound=nn, nmod:poss=poss, aux:pass=auxpass; UD attaches prepositions to their noun as case, "
        "so there is no prep/pobj) instead of Stanford Dependencies on the WSJ.",
        kind="data", reference="clarkkev/attention-analysis Syntax_Analysis.ipynb (relns are SD labels); paper §4.2",
        when=lambda o: o.get("language") in (None, "en"))
declare("clark.relations", "ud_language",
        "Universal Dependencies treebank {treebank} (language {language}) instead of Stanford Dependencies on the English WSJ: the "
        "relations are the treebank's own (every relation with at least min_count arcs), with no Stanford names.",
        kind="data", reference="paper §4.2 (English WSJ only)", when=lambda o: o.get("language") not in (None, "en"))
declare("clark.relations", "poss",
        "The authors' possessive rule (a possessor followed by 's / s' is scored by the prediction of that "
        "token) is applied to UD nmod:poss ({n_poss_rule} arcs in this run); the authors applied it to SD poss.",
        reference="clarkkev/attention-analysis Syntax_Analysis.ipynb, evaluate_predictor")
declare("clark.relations", "head_dep_mode",
        "head->dep is our variant (head_dep_mode={head_dep_mode}): right when the head word's most-attended "
        "word is the dependent; the authors' transpose mode asks whether the word attending most to the "
        "dependent is its head.",
        kind="option", when=option_differs("head_dep_mode", "clark"),
        reference="clarkkev/attention-analysis Syntax_Analysis.ipynb, attn_head_predictor(mode='transpose')")

#: UD relation -> the Stanford Dependencies relation Clark et al. report, where one corresponds.
UD_TO_STANFORD = {
    "obj": "dobj",
    "compound": "nn",
    "nmod:poss": "poss",
    "aux:pass": "auxpass",
    "nsubj": "nsubj",
    "det": "det",
    "amod": "amod",
    "advmod": "advmod",
    "aux": "aux",
    "ccomp": "ccomp",
    "mark": "mark",
    "compound:prt": "prt",
    "case": "prep (UD attaches prepositions to the noun, SD to the verb/noun they modify)",
    "obl": "pobj (approx.: UD's obl/nmod head is the noun that SD calls the object of the preposition)",
    "nmod": "pobj (approx., see obl)",
}

#: Clark et al. (2019), Table 1, BERT-base on WSJ dev (Stanford Dependencies): best head (1-indexed
#: ``layer-head``) per relation, accuracy (%) and the best fixed-offset baseline (%, offset).
#: ``source`` says where each row was read. ``authors' output`` rows were read from the committed
#: cell output of ``clarkkev/attention-analysis`` ``Syntax_Analysis.ipynb`` (cell "This produces the
#: scores in Table 1"; it prints 0-indexed heads, converted here). The paper's own table could not
#: be re-read here (no copy of the PDF text was found with the search tool); where the earlier
#: secondary transcription differs from the authors' output, the transcribed value is kept in
#: ``transcribed`` and not called the paper's.
CLARK_TABLE1 = pd.DataFrame(
    [
        ("All", "7-6", 34.7, 26.7, 1, "authors' output", "paper (transcribed, unverified): 34.5 vs 26.3"),
        ("prep", "7-4", 66.7, 61.8, -1, "authors' output", ""),
        ("pobj", "9-6", 76.3, 34.6, -2, "authors' output (head<-dep direction)", ""),
        ("det", "8-11", 94.3, 51.7, 1, "authors' output", ""),
        ("nn", "4-10", 70.4, 70.2, 1, "authors' output", ""),
        ("nsubj", "8-2", 58.5, 45.5, 1, "authors' output", ""),
        ("amod", "4-10", 75.6, 68.3, 1, "authors' output", ""),
        ("dobj", "8-10", 86.8, 40.0, -2, "authors' output", ""),
        ("advmod", "7-6", 48.8, 40.2, 1, "authors' output", ""),
        ("aux", "4-10", 81.1, 71.5, 1, "authors' output", ""),
        ("poss", "7-6", 80.5, 47.7, 1, "authors' output", ""),
        ("auxpass", "4-10", 94.1, 82.5, 1, "authors' output",
         "paper (transcribed, unverified): 82.5 vs 40.5"),
        ("ccomp", "8-1", 48.8, 12.4, -2, "authors' output", ""),
        ("mark", "8-2", 50.7, 14.5, 2, "authors' output", ""),
        ("prt", "6-7", 99.1, 91.4, -1, "authors' output", ""),
    ],
    columns=["relation_sd", "label", "accuracy", "baseline_accuracy", "baseline_offset", "source", "transcribed"],
)
CLARK_TABLE1_PROVENANCE = ("authors' code output: clarkkev/attention-analysis Syntax_Analysis.ipynb, committed "
                           "output of the Table 1 cell (0-indexed heads printed there, +1 here)")


def relation_of(deprel: str, keep_subtypes: bool = True) -> str:
    """UD relation label; ``keep_subtypes=False`` folds ``nmod:poss`` into ``nmod``."""
    return deprel if keep_subtypes else deprel.split(":")[0]


def score_predictions(pred: np.ndarray, sentence: Sentence, n: int) -> np.ndarray:
    """The authors' ``evaluate_predictor`` for one sentence: ``pred[..., i]`` is the predicted head
    (CoNLL-U numbering, 0 = ROOT) of word ``i`` (0-based, ``i < n``); returns whether each word is
    right, with the possessive rule of the module docstring applied to :data:`POSS`."""
    gold = np.asarray(sentence.heads[:n])
    ok = pred == gold
    words, rels = sentence.words, sentence.deprels
    for i in range(min(n, sentence.n) - 1):
        if rels[i] == POSS and words[i + 1] in POSSESSIVE_MARKERS:
            rule = pred[..., i] < sentence.n  # the reference's guard: p < len(words)
            ok[..., i] = np.where(rule, pred[..., i + 1] == gold[i], ok[..., i])
    return ok


def offset_predictions(n: int, offsets=OFFSETS) -> np.ndarray:
    """``(len(offsets), n)``: the reference's fixed-offset predictor, ``clip(i + o + 1, 0, n)``."""
    i = np.arange(n)
    return np.clip(i[None, :] + np.asarray(offsets)[:, None] + 1, 0, n)


class RelationHeads:
    """Reducer: per relation, per head, per direction, how often a head's prediction is right
    (definitions in the module docstring).

    ``sentences[item.index]`` must be the gold sentence of each input (single-segment inputs).
    ``head_dep_mode``: ``"clark"`` (the authors' transpose mode, default) or ``"head_argmax"``
    (ours). Words lost to truncation, and words whose head was lost, are not scored.
    ``n_poss_rule`` counts the arcs the possessive rule applies to.
    """

    def __init__(self, sentences: list[Sentence], n_layers: int, n_heads: int, keep_subtypes: bool = True,
                 head_dep_mode: str = "clark", offsets=OFFSETS):
        if head_dep_mode not in HEAD_DEP_MODES:
            raise ValueError(f"head_dep_mode must be one of {HEAD_DEP_MODES}, got {head_dep_mode!r}")
        self.sentences = sentences
        self.shape = (n_layers, n_heads)
        self.keep_subtypes = keep_subtypes
        self.head_dep_mode = head_dep_mode
        self.offsets = tuple(offsets)
        self.correct = defaultdict(lambda: np.zeros((2, n_layers, n_heads), dtype=np.int64))
        self.offset_correct = defaultdict(lambda: np.zeros(len(self.offsets), dtype=np.int64))
        self.count = defaultdict(int)
        self.n_poss_rule = 0

    def update(self, item: Item) -> None:
        sent = self.sentences[item.index]
        units = item.encoding.word_units
        n = len(units)
        a = item.attention[:, :, units][:, :, :, units].astype(np.float64)  # words only: (L, H, n, n)
        idx = np.arange(n)
        a[:, :, idx, idx] = 0.0  # as the reference: attention to self is zeroed, then argmax
        dep_to_head = score_predictions(a.argmax(-1) + 1, sent, n)  # (L, H, n)
        if self.head_dep_mode == "clark":
            head_to_dep = score_predictions(a.argmax(-2) + 1, sent, n)  # argmax over rows of column d
        else:
            head_to_dep = self._head_argmax(a.argmax(-1), sent, n)
        offsets = score_predictions(offset_predictions(n, self.offsets), sent, n)  # (offsets, n)
        scored = np.array([sent.heads[d] <= n for d in range(n)], dtype=bool)  # head not truncated away
        rels = [relation_of(sent.deprels[d], self.keep_subtypes) for d in range(n)]
        self.n_poss_rule += sum(sent.deprels[d] == POSS and d + 1 < sent.n and sent.words[d + 1] in POSSESSIVE_MARKERS
                                and scored[d] for d in range(n))
        for rel in set(np.array(rels)[scored]) | {ALL}:
            sel = scored if rel == ALL else scored & np.array([r == rel for r in rels])
            c = self.correct[rel]
            c[0] += dep_to_head[:, :, sel].sum(-1)
            c[1] += head_to_dep[:, :, sel].sum(-1)
            self.offset_correct[rel] += offsets[:, sel].sum(-1)
            self.count[rel] += int(sel.sum())

    @staticmethod
    def _head_argmax(most: np.ndarray, sent: Sentence, n: int) -> np.ndarray:
        """Our variant: word ``d`` is right when its head word's most-attended word is ``d`` (for a
        possessor followed by 's: the 's token). A root word has no head word: always wrong."""
        ok = np.zeros(most.shape, dtype=bool)
        for d in range(n):
            h = sent.heads[d]
            if 0 < h <= n:
                target = d
                if sent.deprels[d] == POSS and d + 1 < n and sent.words[d + 1] in POSSESSIVE_MARKERS:
                    target = d + 1
                ok[..., d] = most[..., h - 1] == target
        return ok

    def result(self) -> pd.DataFrame:
        """Tidy: ``relation, layer, head, direction, correct, n, accuracy`` (0-indexed; ``n``: arcs scored)."""
        rows = []
        L, H = self.shape
        for rel, c in sorted(self.correct.items()):
            n = self.count[rel]
            for d, direction in enumerate(DIRECTIONS):
                for layer in range(L):
                    for head in range(H):
                        k = int(c[d, layer, head])
                        rows.append((rel, layer, head, direction, k, n, k / n))
        return pd.DataFrame(rows, columns=["relation", "layer", "head", "direction", "correct", "n", "accuracy"])

    def baselines(self) -> pd.DataFrame:
        """Tidy: ``relation, offset, correct, n, accuracy`` for every fixed offset."""
        rows = []
        for rel, c in sorted(self.offset_correct.items()):
            n = self.count[rel]
            rows += [(rel, o, int(k), n, k / n) for o, k in zip(self.offsets, c)]
        return pd.DataFrame(rows, columns=["relation", "offset", "correct", "n", "accuracy"])


def relation_inventory(sentences: list[Sentence], min_count: int = 1, keep_subtypes: bool = True) -> pd.DataFrame:
    """Relations of the data itself (any UD language): ``relation, n`` for every relation with at
    least ``min_count`` arcs, most frequent first (ties by name); ``root`` and ``punct`` included."""
    counts: dict[str, int] = defaultdict(int)
    for s in sentences:
        for r in s.deprels:
            counts[relation_of(r, keep_subtypes)] += 1
    rows = sorted(((r, n) for r, n in counts.items() if n >= min_count), key=lambda x: (-x[1], x[0]))
    return pd.DataFrame(rows, columns=["relation", "n"])


def best_heads(heads: pd.DataFrame, baselines: pd.DataFrame, min_count: int = 100,
               stanford: bool = True) -> pd.DataFrame:
    """Clark et al. Table 1: per relation with at least ``min_count`` arcs, the best head (either
    direction) and the best offset baseline, sorted by frequency; ``all`` (every word) first, the
    ``root`` and ``punct`` rows left out as in the reference. Columns: ``relation, n`` (arcs),
    ``layer, head`` (0-indexed ints), ``label`` (the paper's 1-indexed ``layer-head``), ``direction,
    accuracy, baseline_offset, baseline_accuracy`` and ``stanford`` (the Stanford name, where one
    corresponds); ``stanford=False`` (non-English treebanks) leaves that column out."""
    h = heads[((heads["n"] >= min_count) | (heads["relation"] == ALL)) & ~heads["relation"].isin(NOT_IN_TABLE)]
    best = h.loc[h.groupby("relation")["accuracy"].idxmax()]
    base = baselines.loc[baselines.groupby("relation")["accuracy"].idxmax()].set_index("relation")
    out = pd.DataFrame({
        "relation": best["relation"].values,
        "n": best["n"].values,
        "layer": best["layer"].values,
        "head": best["head"].values,
        "label": [head_label(layer, head) for layer, head in zip(best["layer"], best["head"])],
        "direction": best["direction"].values,
        "accuracy": best["accuracy"].values,
        "baseline_offset": base.loc[best["relation"], "offset"].values,
        "baseline_accuracy": base.loc[best["relation"], "accuracy"].values,
    })
    if stanford:
        out["stanford"] = out["relation"].map(UD_TO_STANFORD).fillna("")
    return out.sort_values("n", ascending=False, kind="stable").reset_index(drop=True)  # "all" first


def gold_arcs(sentence: Sentence) -> list[tuple[int, int, str]]:
    """``(dependent, head, relation)`` with 0-indexed words; arcs to ROOT left out (for figures)."""
    return [(d, h - 1, r) for d, (h, r) in enumerate(zip(sentence.heads, sentence.deprels)) if h > 0]


def syntactic_heads(best: pd.DataFrame, margin: float = 0.1) -> dict[tuple[int, int], str]:
    """Heads that beat their relation's best offset baseline by ``margin`` (absolute accuracy),
    as ``{(layer, head): "syntax: rel"}``; a head best for several relations keeps the most frequent."""
    out: dict[tuple[int, int], str] = {}
    good = best[(best.relation != ALL) & (best.accuracy - best.baseline_accuracy >= margin)]
    for r in good.sort_values("n", ascending=False).itertuples():
        out.setdefault((int(r.layer), int(r.head)), f"syntax: {r.relation}")
    return out


#: Relations whose every-head accuracy grid notebook 02 draws, in order of preference.
GRID_RELATIONS = ("obj", "det", "nsubj")
#: Relations whose best-head accuracy is a key number of notebook 02 (those the table has).
KEY_RELATIONS = (ALL, "det", "obj", "nsubj", "case")
#: Absolute accuracy gain over the best offset baseline that "what this run shows" counts as beating it.
BEATS_BASELINE = 0.1


def grid_relations(best: pd.DataFrame, prefer=GRID_RELATIONS, k: int = 2) -> list[tuple[str, str]]:
    """The first ``k`` relations of ``prefer`` that ``best`` (:func:`best_heads`) has, each with the
    direction of its best head: ``[(relation, direction), ...]``, for the every-head grids."""
    direction = best.set_index("relation")["direction"]
    return [(r, direction[r]) for r in prefer if r in direction.index][:k]


def example_maps(best: pd.DataFrame, items: dict, sentences: list[Sentence], n_relations: int = 4,
                 min_words: int = 8, max_words: int = 18) -> tuple[list[tuple[str, np.ndarray, list]], list[str]]:
    """Clark et al. Fig. 5: the word-level map of the best head of each of the first ``n_relations``
    relations of ``best`` (``all`` left out) on one kept sentence, with the cells a perfect head would
    fill: ``(maps, words)`` for :func:`bertology.plots.attention_with_arcs`, each map ``(title, matrix,
    [(row, col), ...])`` (dependent -> head, or head -> dependent for ``head->dep``).

    ``items``: ``{sentence index: Item}`` (``attention.KeepExamples.result()``). The sentence is the
    one of ``min_words``-``max_words`` words (any kept one if none is) with the most of those
    relations; ties go to the first kept."""
    show = [r for r in best.itertuples() if r.relation != ALL][:n_relations]
    readable = [i for i in items if min_words <= sentences[i].n <= max_words] or list(items)
    choice = max(readable, key=lambda i: len({r.relation for r in show} & set(sentences[i].deprels)))
    item, sent = items[choice], sentences[choice]
    units = item.encoding.word_units
    maps = []
    for r in show:
        m = item.attention[r.layer, r.head][units][:, units]
        arcs = [(d, h) if r.direction == "dep->head" else (h, d) for d, h, rel in gold_arcs(sent)
                if rel == r.relation and d < len(units) and h < len(units)]
        maps.append((f"{r.label}: {r.relation} ({r.direction})", m, arcs))
    return maps, sent.words[: len(units)]


def findings_text(best: pd.DataFrame, min_count: int, top: int = 3) -> list[str]:
    """Markdown lines of notebook 02's "what this run shows" on the relation heads (``best`` from
    :func:`best_heads`): the best head over all relations against the best offset; how many relations
    have a head beating their best offset by :data:`BEATS_BASELINE`, and the ``top`` most accurate."""
    a = best[best.relation == ALL].iloc[0]
    rel = best[best.relation != ALL]
    beat = rel[rel.accuracy - rel.baseline_accuracy >= BEATS_BASELINE]
    most = rel.sort_values("accuracy", ascending=False).head(top)
    return [
        f"Over all relations, the best single head ({a['label']}) finds the syntactic head {a['accuracy']:.0%} of the "
        f"time; the best fixed offset ({a['baseline_offset']:+d}) {a['baseline_accuracy']:.0%}.",
        f"{len(beat)} of {len(rel)} relations with ≥ {min_count} arcs have a head that beats the best offset baseline "
        f"by {100 * BEATS_BASELINE:.0f} points or more; the most accurate: "
        + "; ".join(f"{r.relation} {r.accuracy:.0%} (head {r.label}, baseline {r.baseline_accuracy:.0%})"
                    for r in most.itertuples()) + ".",
    ]


def key_numbers(best: pd.DataFrame, relations=KEY_RELATIONS) -> dict[str, float]:
    """Headline numbers of notebook 02 for the index: the best head's accuracy for each of
    ``relations`` that ``best`` (:func:`best_heads`) has."""
    acc = best.set_index("relation")["accuracy"]
    return {f"best head accuracy: {r}": float(acc[r]) for r in relations if r in acc.index}


@dataclass
class RelationStudy:
    """What :func:`relation_study` returns: the :class:`RelationHeads` tables (``heads``:
    :meth:`RelationHeads.result`, ``baselines``: :meth:`RelationHeads.baselines`), the kept example
    items (``{sentence index: Item}``), the extraction's ``stats`` and ``n_poss_rule``."""

    heads: pd.DataFrame
    baselines: pd.DataFrame
    examples: dict
    stats: ExtractStats
    n_poss_rule: int


def relation_study(loaded, sentences: list[Sentence], head_dep_mode: str = "clark", n_examples: int = 40,
                   **extract_kwargs) -> RelationStudy:
    """Notebook 02's relation heads in one word-level :func:`bertology.extract.extract` pass over
    ``sentences``: :class:`RelationHeads` (``head_dep_mode``) for every head of ``loaded``, keeping the
    items of the first ``n_examples`` sentences for the example maps (:func:`example_maps`)."""
    from .attention import KeepExamples

    relations = RelationHeads(sentences, loaded.info.n_layers, loaded.info.n_heads, head_dep_mode=head_dep_mode)
    examples = KeepExamples(range(min(len(sentences), n_examples)))
    stats = extract(loaded, [s.words for s in sentences], [relations, examples], **extract_kwargs)
    return RelationStudy(relations.result(), relations.baselines(), examples.result(), stats, relations.n_poss_rule)
