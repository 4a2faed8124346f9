"""Perturbations of treebank sentences, their gold trees, and state similarity, checked by hand."""
import numpy as np
import pytest

from bertology import perturb as pt
from bertology import structural_probe as sp
from bertology.data import Sentence

# "The cat saw the dog ." : The->cat, cat->saw (nsubj), saw=root, the->dog, dog->saw (obj), .->saw
SAW = Sentence(words="The cat saw the dog .".split(), heads=[2, 3, 0, 5, 3, 3],
               deprels=["det", "nsubj", "root", "det", "obj", "punct"],
               upos=["DET", "NOUN", "VERB", "DET", "NOUN", "PUNCT"], sent_id="saw")
# "Yesterday , the dog barked" : root at the end, so truncation cuts it off
LATE = Sentence(words="Yesterday , the dog barked".split(), heads=[5, 5, 4, 5, 0],
                deprels=["obl", "punct", "det", "nsubj", "root"], upos=["NOUN", "PUNCT", "DET", "NOUN", "VERB"])


def test_shuffle_keeps_every_words_head():
    rng = np.random.default_rng(3)
    s, perm = pt.shuffle_words(SAW, rng)
    assert sorted(perm) == list(range(6)) and perm != list(range(6))
    assert s.words == [SAW.words[o] for o in perm]
    # tree distances are the original ones carried through the permutation
    old, new = sp.tree_distances(SAW.heads), sp.tree_distances(s.heads)
    assert (new == old[np.ix_(perm, perm)]).all()
    # the head word of each word is unchanged
    for i, o in enumerate(perm):
        h = s.heads[i]
        assert (h == 0) == (SAW.heads[o] == 0)
        if h:
            assert s.words[h - 1] == SAW.words[SAW.heads[o] - 1]


def test_truncate_restricts_the_tree_by_hand():
    s, keep = pt.truncate(SAW)
    assert keep == [0, 1, 2] and s.words == ["The", "cat", "saw"] and s.heads == [2, 3, 0]
    # root cut off: "Yesterday" (depth 1, leftmost) becomes root; "," (depth 1) attaches to it;
    # "the" (its head "dog" and "barked" are gone) attaches to it too
    s, keep = pt.truncate(LATE)
    assert keep == [0, 1, 2] and s.heads == [0, 1, 1]


def test_restrict_tree_nearest_kept_ancestor():
    # keep The, saw, dog: "The" loses its head "cat" -> attaches to "saw"
    assert pt.restrict_tree(SAW.heads, [0, 2, 4]) == [2, 0, 2]
    with pytest.raises(ValueError, match="increasing"):
        pt.restrict_tree(SAW.heads, [2, 0])


def test_drop_subject_and_object_and_skips():
    s, keep = pt.drop_dependent(SAW, pt.SUBJECT)
    assert s.words == ["saw", "the", "dog", "."] and keep == [2, 3, 4, 5] and s.heads == [0, 3, 1, 1]
    s, keep = pt.drop_dependent(SAW, pt.OBJECT)
    assert s.words == ["The", "cat", "saw", "."] and s.heads == [2, 3, 0, 3]
    assert pt.drop_dependent(LATE, pt.OBJECT) is None
    items, skipped = pt.perturb([SAW, LATE, SAW], "drop_object")
    assert skipped == 1 and [p.index for p in items] == [0, 2]
    items, skipped = pt.perturb([SAW, LATE], "drop_subject")
    assert skipped == 0 and items[1].sentence.words == ["Yesterday", ",", "barked"]
    with pytest.raises(ValueError, match="kind"):
        pt.perturb([SAW], "reverse")


def test_shuffle_is_seeded():
    a, _ = pt.perturb([SAW, LATE], "shuffle", seed=1)
    b, _ = pt.perturb([SAW, LATE], "shuffle", seed=1)
    assert [p.source for p in a] == [p.source for p in b]


def test_cka_and_cosine_by_hand():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert pt.linear_cka(X, 3.0 * X @ Q) == pytest.approx(1.0)  # rotation + isotropic scale
    assert pt.linear_cka(X[:5], X[:5] @ Q) == pytest.approx(1.0)  # fewer items than dims: Gram form
    assert pt.linear_cka(X, rng.normal(size=(50, 8))) < 0.3
    assert pt.mean_cosine(X, 2 * X) == pytest.approx(1.0)
    assert pt.mean_cosine(np.array([[1.0, 0], [1, 1]]), np.array([[0.0, 1], [1, 1]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same items"):
        pt.linear_cka(X, X[:10])


def test_paired_states_align_surviving_words():
    # intact: two sentences (6 and 5 words); vector of word k of sentence s = [s, k]
    sents = [SAW, LATE]
    off = np.array([0, 6, 11])
    vec = np.array([[s, k] for s, n in enumerate([6, 5]) for k in range(n)], np.float32)
    intact = sp.WordStates(np.stack([vec, vec + 100]), off, sents)
    items, _ = pt.perturb(sents, "drop_subject")
    # perturbed states: copy the intact vectors of the surviving words (as a model with no context would)
    pv = np.concatenate([vec[off[p.index] + np.array(p.source)] for p in items])
    poff = np.concatenate([[0], np.cumsum([len(p.source) for p in items])])
    pert = sp.WordStates(np.stack([pv, pv + 100]), poff, [p.sentence for p in items])
    X, Y = pt.paired_states(intact, pert, items)
    assert X.shape == (2, 7, 2) and (X == Y).all()
    assert X[0, :4].tolist() == [[0, 2], [0, 3], [0, 4], [0, 5]]
    sim = pt.state_similarity(X, Y).set_index(["layer", "metric"]).value
    assert sim[(0, "cka")] == pytest.approx(1.0) and sim[(1, "cosine")] == pytest.approx(1.0)


def test_shuffle_context_keeps_the_mask_in_place():
    rng = np.random.default_rng(0)
    out = pt.shuffle_context("the keys to the cabinet [MASK] on the table", rng)
    words = out.split()
    assert words[5] == "[MASK]" and sorted(words) == sorted("the keys to the cabinet [MASK] on the table".split())
    assert out != "the keys to the cabinet [MASK] on the table"
    assert pt.shuffle_context("it [MASK]", rng) == "it [MASK]"
    with pytest.raises(ValueError, match="exactly once"):
        pt.shuffle_context("no mask here", rng)


def _study_tables():
    import pandas as pd

    sim = pd.DataFrame([(kind, layer, metric, v, 5) for kind, vals in
                        [("shuffle", {"cka": [1.0, 0.9, 0.5], "cosine": [1.0, 0.95, 0.6], "cosine_chance": [0.1, 0.2, 0.3]}),
                         ("truncate", {"cka": [1.0, 0.99, 0.95], "cosine": [1.0, 0.98, 0.97], "cosine_chance": [0.1, 0.1, 0.1]})]
                        for metric, vs in vals.items() for layer, v in enumerate(vs)],
                       columns=["perturbation", "layer", "metric", "value", "n"])
    probe = pd.DataFrame([(kind, cond, layer, "distance", 8, "uuas", v, 4) for kind, cond, vals in
                          [("shuffle", "intact", [0.2, 0.6, 0.5]), ("shuffle", "perturbed", [0.2, 0.25, 0.3])]
                          for layer, v in enumerate(vals)],
                         columns=["perturbation", "condition", "layer", "kind", "rank", "metric", "value", "n"])
    return sim, probe


def test_perturbation_findings_and_text_by_hand():
    sim, probe = _study_tables()
    f = pt.findings(sim, probe, probe_layer=1)
    assert f["last_layer"] == 2 and f["most_disruptive"] == "shuffle"  # last-layer CKA 0.5 < 0.95
    assert f["perturbations"]["shuffle"] == {"cka_last": 0.5, "cosine_last": 0.6, "cosine_chance_last": 0.3,
                                             "cka_layer1": 0.9, "uuas_intact": 0.6, "uuas_perturbed": 0.25}
    assert "uuas_intact" not in f["perturbations"]["truncate"]  # no probe rows for truncation
    lines = pt.findings_text(f)
    assert lines[0] == ("**shuffle**: last-layer CKA 0.500, cosine 0.600 (chance 0.300); layer-1 CKA 0.900; "
                        "the layer-1 probe's UUAS goes from 0.600 (intact) to 0.250.")
    assert lines[1] == "**truncate**: last-layer CKA 0.950, cosine 0.970 (chance 0.100); layer-1 CKA 0.990."
    assert "*shuffle* (last-layer CKA 0.500); so the representations do change measurably" in lines[2]
    calm = pt.findings(sim[sim.perturbation == "truncate"], probe.iloc[:0], 1)
    assert pt.findings_text(calm)[-1].endswith("yet the representations stay close to the intact ones.")  # 0.95 >= 0.9
    assert pt.findings(sim.iloc[:0], probe, 1) == {} and pt.findings_text({}) == []


def test_perturbation_display_tables():
    sim, probe = _study_tables()
    last = pt.similarity_table(sim, -1)  # -1 = last layer
    assert last.loc["shuffle"].to_dict() == {"cka": 0.5, "cosine": 0.6, "cosine_chance": 0.3}
    assert pt.similarity_table(sim, 1).loc["truncate", "cka"] == 0.99
    at = pt.probe_table(probe, 1)
    assert at.loc["shuffle", ("uuas", "intact")] == 0.6 and at.loc["shuffle", ("uuas", "perturbed")] == 0.25


def test_perturbation_study_limit_takes_the_first_sentences(tokenizer):
    from bertology.data import load_treebank
    from bertology.models import random_bert

    loaded = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=False, seed=0)
    ws = sp.word_states(loaded, load_treebank("sample", "test", limit=5), progress=False)
    kw = dict(kinds=("shuffle", "truncate"), seed=1, progress=False)
    limited = pt.perturbation_study(loaded, ws, [], limit=3, **kw)
    by_hand = pt.perturbation_study(loaded, ws.subset(range(3)), [], **kw)
    assert all(limited[name].equals(by_hand[name]) for name in ("similarity", "probe", "counts"))
    assert limited["counts"]["n_sentences"].tolist() == [3, 3]
    assert pt.perturbation_study(loaded, ws, [], limit=50, **kw)["counts"]["n_sentences"].tolist() == [5, 5]
