"""Tests for bertology.data: registry/cache/mirror, CoNLL-U reading, the grammar and the sample."""
from __future__ import annotations

import collections
import hashlib
import os

import numpy as np
import pytest

from bertology.data import (
    CoNLLUError, DataIntegrityError, DataUnavailableError, RegistryEntry, Sentence, UnknownDatasetError,
    data_path, dataset_info, generate_treebank, list_datasets, load_treebank, read_conllu, sample_path,
    sentence_pairs, to_dataset, write_conllu,
)
from bertology.data import registry
from bertology.data.grammar import RELATIONS

# ---------------------------------------------------------------- CoNLL-U reading

MWT = """\
# newdoc id = d1
# sent_id = s1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s2
# text = Go.
1\tGo\tgo\tVERB\tVB\t_\t0\troot\t_\tEntity=(1-person-new)|SpaceAfter=No
1.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t0:root\t_
2\t.\t.\tPUNCT\t.\t_\t1\tpunct\t_\t_
"""


def test_read_multiword_token_and_empty_node():
    s1, s2 = read_conllu(MWT)
    assert s1.words == ["I", "do", "n't", "know", "."]
    assert s1.heads == [4, 4, 4, 0, 4]
    assert s1.deprels == ["nsubj", "aux", "advmod", "root", "punct"]
    assert s1.upos == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert (s1.sent_id, s1.text, s1.doc_id, s1.n) == ("s1", "I don't know.", "d1", 5)
    assert s1.misc[3] == {"SpaceAfter": "No"} and s1.misc[0] is None
    # the empty node 1.1 is dropped; doc id carries forward; MISC keeps the Entity bracket
    assert s2.words == ["Go", "."] and s2.heads == [0, 1] and s2.doc_id == "d1"
    assert s2.misc[0] == {"Entity": "(1-person-new)", "SpaceAfter": "No"}


def test_write_read_roundtrip():
    sents = read_conllu(MWT) + read_conllu(sample_path()) + generate_treebank(50, seed=3)
    assert read_conllu(write_conllu(sents)) == sents


def _sent(rows: list[str], comments: str = "# sent_id = x\n") -> str:
    return comments + "".join(r.replace(" ", "\t") + "\n" for r in rows) + "\n"


GOOD = ["1 A _ DET _ _ 2 det _ _", "2 b _ NOUN _ _ 0 root _ _"]


@pytest.mark.parametrize("text, line, what", [
    # 3 lines of a good sentence, blank line, then the bad sentence starts on line 5
    (_sent(GOOD) + _sent(["1 A _ DET _ _ 2 det _", "2 b _ NOUN _ _ 0 root _ _"]), 6, "10 tab-separated columns, found 9"),
    (_sent(GOOD) + _sent(["x A _ DET _ _ 2 det _ _", "2 b _ NOUN _ _ 0 root _ _"]), 6, "ID 'x' is not an integer"),
    (_sent(GOOD) + _sent(["1 A _ DET _ _ 2 det _ _", "2 b _ NOUN _ _ _ root _ _"]), 7, "HEAD '_' of word 2"),
    (_sent(GOOD) + _sent(["1 A _ DET _ _ 3 det _ _", "2 b _ NOUN _ _ 0 root _ _"]), 6, "HEAD 3 of word 1 is out of range 0..2"),
    (_sent(GOOD) + _sent(["1 A _ DET _ _ 3 det _ _", "3 b _ NOUN _ _ 0 root _ _"]), 7, "not contiguous: expected 2, found 3"),
    (_sent(GOOD) + _sent(["1 A _ DET _ _ 2 det _ _", "2 b _ NOUN _ _ 1 nmod _ _"]), 5, "no root"),
    (_sent(GOOD) + _sent(["1 A _ X _ _ 0 root _ _", "2 b _ X _ _ 3 dep _ _", "3 c _ X _ _ 2 dep _ _"]), 7,
     "word 2 never reaches the root (cycle 2 -> 3 -> 2)"),
    (_sent(GOOD) + _sent(["1 A _ X _ _ 0 root _ _", "2 b _ X _ _ 0 root _ _"]), 7, "2 roots"),
])
def test_malformed_conllu_names_line(text, line, what):
    with pytest.raises(CoNLLUError) as err:
        read_conllu(text, name="bad.conllu")
    assert err.value.line == line
    assert f"bad.conllu, line {line}:" in str(err.value)
    assert what in str(err.value)


def test_malformed_file_names_path(tmp_path):
    p = tmp_path / "broken.conllu"
    p.write_text(_sent(GOOD) + _sent(["1 A _ DET _ _ 9 det _ _", "2 b _ NOUN _ _ 0 root _ _"]))
    with pytest.raises(CoNLLUError, match=r"broken\.conllu, line 6: HEAD 9"):
        read_conllu(p)


def test_limit_reads_the_first_sentences_only(tmp_path):
    """read_conllu(limit=k) gives the first k sentences of the full read (doc ids carried), and a
    malformed sentence after them is never reached; load_treebank passes its limit on."""
    text = MWT + "\n" + _sent(GOOD) + "# only a comment\n\n" + _sent(GOOD, "# sent_id = y\n")
    full = read_conllu(text)
    assert len(full) == 4
    for k in range(1, 5):
        assert read_conllu(text, limit=k) == full[:k]
    assert read_conllu(text, limit=9) == full
    assert read_conllu(text, limit=1)[0].doc_id == "d1" and read_conllu(text, limit=2)[1].doc_id == "d1"
    bad = _sent(GOOD) + _sent(GOOD) + _sent(["1 A _ DET _ _ 9 det _ _", "2 b _ NOUN _ _ 0 root _ _"])
    assert len(read_conllu(bad, limit=2)) == 2
    with pytest.raises(CoNLLUError, match="line 10: HEAD 9"):
        read_conllu(bad, limit=3)
    with pytest.raises(ValueError, match="positive integer"):
        read_conllu(text, limit=0)
    p = tmp_path / "bad.conllu"
    p.write_text(bad)
    tb = load_treebank(str(p), limit=2)
    assert len(tb) == 2 and tb.n_read == 2
    assert read_conllu(text, limit=np.int64(2)) == full[:2]  # a numpy count, as sizes often are
    good = tmp_path / "good.conllu"
    good.write_text(text)
    assert len(load_treebank(str(good), limit=0)) == 0  # no sentence, as a plain slice gives
    with pytest.raises(CoNLLUError):
        load_treebank(str(p), limit=2, max_words=5)  # a length filter reads the whole file


def test_empty_input_is_an_error(tmp_path):
    p = tmp_path / "empty.conllu"
    p.write_text("")
    with pytest.raises(CoNLLUError, match="empty.conllu: no sentences"):
        read_conllu(p)
    with pytest.raises(CoNLLUError, match="no sentences"):
        read_conllu("# just a comment\n\n")


# ---------------------------------------------------------------- registry, mirror, cache

def test_registry_contents():
    assert {"ud-english-ewt", "ud-english-gum", "blimp"} <= set(list_datasets())
    info = dataset_info("ud-english-ewt")
    assert info["license"] == "CC BY-SA 4.0"
    assert "en_ewt-ud-dev.conllu" in info["files"]
    e = registry.registry_entry("ud-english-ewt", "en_ewt-ud-train.conllu")
    assert e.url == "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/en_ewt-ud-train.conllu"
    dev = registry.registry_entry("ud-english-ewt", "en_ewt-ud-dev.conllu")
    assert dev.url.endswith("/UD_English-EWT/15d613d8447b3478787d4c278730a1e48a945efb/en_ewt-ud-dev.conllu")
    assert dev.bytes == 1805545


def test_unknown_names():
    with pytest.raises(UnknownDatasetError, match="known datasets: .*ud-english-ewt"):
        data_path("no-such-dataset", "x")
    with pytest.raises(KeyError, match="its files: .*en_ewt-ud-dev.conllu"):
        data_path("ud-english-ewt", "nope.conllu")


PAYLOAD = b"hello, registry\n"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A toy dataset whose only file lives at a file:// URL; no mirror, cache in tmp_path."""
    src = tmp_path / "upstream" / "hello.txt"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    entry = RegistryEntry("toy", "hello.txt", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(),
                          src.as_uri(), "CC0")
    monkeypatch.setitem(registry._entries(), "toy", {"hello.txt": entry})
    monkeypatch.delenv("BERTOLOGY_DATA", raising=False)
    monkeypatch.setenv("BERTOLOGY_CACHE", str(tmp_path / "cache"))
    downloads = []
    real = registry._download
    monkeypatch.setattr(registry, "_download", lambda e, dest: (downloads.append(e.url), real(e, dest)))
    return src, entry, downloads, tmp_path


def test_download_lands_in_cache_once(toy):
    src, entry, downloads, tmp = toy
    p = data_path("toy", "hello.txt")
    assert p == tmp / "cache" / "data" / "toy" / "hello.txt"
    assert p.read_bytes() == PAYLOAD and downloads == [entry.url]
    src.unlink()  # the second call must not need the source
    assert data_path("toy", "hello.txt") == p
    assert downloads == [entry.url]
    assert not [f for f in p.parent.iterdir() if f.name != "hello.txt"]  # no temp files left behind


def test_verified_hash_is_remembered(toy, monkeypatch):
    data_path("toy", "hello.txt")
    calls = []
    real = registry._sha256_file
    monkeypatch.setattr(registry, "_sha256_file", lambda p: (calls.append(p), real(p))[1])
    for _ in range(3):
        data_path("toy", "hello.txt")
    assert calls == []  # hashed while downloading; unchanged file is not hashed again


def test_corrupt_cache_is_downloaded_again(toy):
    src, entry, downloads, tmp = toy
    p = data_path("toy", "hello.txt")
    p.write_bytes(PAYLOAD.replace(b"h", b"j"))  # same size, different bytes
    os.utime(p, ns=(1, 1))  # a different mtime, as after any real change
    assert data_path("toy", "hello.txt").read_bytes() == PAYLOAD
    assert downloads == [entry.url, entry.url]


def test_download_with_wrong_hash_is_refused(toy):
    src, entry, downloads, tmp = toy
    src.write_bytes(PAYLOAD.upper())
    with pytest.raises(DataIntegrityError, match="sha256"):
        data_path("toy", "hello.txt")
    assert not (tmp / "cache" / "data" / "toy" / "hello.txt").exists()


@pytest.mark.parametrize("url", ["file:///nonexistent/dir/hello.txt", "http://127.0.0.1:9/hello.txt"])
def test_offline_error_explains_mirror(toy, monkeypatch, url):
    src, entry, downloads, tmp = toy
    monkeypatch.setitem(registry._entries(), "toy", {"hello.txt": RegistryEntry(
        "toy", "hello.txt", entry.bytes, entry.sha256, url, "CC0")})
    with pytest.raises(DataUnavailableError) as err:
        data_path("toy", "hello.txt")
    msg = str(err.value)
    for part in ("toy/hello.txt", url, str(tmp / "cache" / "data" / "toy" / "hello.txt"), "BERTOLOGY_DATA"):
        assert part in msg


def test_mirror_is_used_and_checked(toy, monkeypatch):
    src, entry, downloads, tmp = toy
    mirror = tmp / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "hello.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("BERTOLOGY_DATA", str(mirror))
    assert data_path("toy", "hello.txt") == mirror / "toy" / "hello.txt"
    assert downloads == []
    (mirror / "toy" / "hello.txt").write_bytes(PAYLOAD[:-2] + b"!\n")  # one byte changed
    with pytest.raises(DataIntegrityError, match="BERTOLOGY_DATA mirror.*sha256"):
        data_path("toy", "hello.txt")


def test_mirror_without_the_file_falls_back_to_cache(toy, monkeypatch):
    src, entry, downloads, tmp = toy
    monkeypatch.setenv("BERTOLOGY_DATA", str(tmp / "empty-mirror"))
    assert data_path("toy", "hello.txt").read_bytes() == PAYLOAD
    assert downloads == [entry.url]


needs_mirror = pytest.mark.skipif(not os.environ.get("BERTOLOGY_DATA"), reason="BERTOLOGY_DATA not set")


@needs_mirror
def test_registry_matches_manifest(tmp_path):
    """registry.tsv is what scripts/make_registry.py makes from the mirror's MANIFEST.tsv."""
    import runpy
    from pathlib import Path

    manifest = Path(os.environ["BERTOLOGY_DATA"]) / "MANIFEST.tsv"
    if not manifest.exists():
        pytest.skip("mirror has no MANIFEST.tsv")
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_registry.py"
    out = tmp_path / "registry.tsv"
    runpy.run_path(str(script))["main"]([str(manifest), "--out", str(out)])
    assert out.read_text() == registry._REGISTRY_FILE.read_text()


@needs_mirror
def test_ewt_through_mirror():
    dev = load_treebank("ewt", "dev")
    assert len(dev) == 2001 and sum(s.n for s in dev) == 25147
    assert len({s.doc_id for s in dev}) == 318
    assert len(load_treebank("ewt", "test")) == 2077
    short = load_treebank("ewt", "dev", max_words=10, limit=50)
    assert len(short) == 50 and all(s.n <= 10 for s in short)
    assert short.n_read == 2001 and short.n_too_long > 500
    head = load_treebank("ewt", "train", limit=30)  # the first 30 sentences, the rest of the file unread
    whole = read_conllu(data_path("ud-english-ewt", "en_ewt-ud-train.conllu"))
    assert head.n_read == 30 and list(head) == whole[:30] and len(whole) == 12544


@needs_mirror
def test_gum_keeps_entities():
    gum = load_treebank("gum", "dev", limit=20)
    assert gum[0].doc_id == "GUM_academic_exposure"
    assert any(m and "Entity" in m for s in gum for m in s.misc)
    with pytest.raises(ValueError, match="splits"):
        load_treebank("gum", "train")


# ---------------------------------------------------------------- grammar and sample

def _tree_problems(s: Sentence) -> list[str]:
    problems = []
    if [h for h in s.heads if h == 0] != [0]:
        problems.append("not exactly one root")
    for i in range(1, s.n + 1):
        seen, w = set(), i
        while w and w not in seen:
            seen.add(w)
            w = s.heads[w - 1]
        if w:
            problems.append(f"word {i} never reaches the root")
    # projective: every word between a head and its dependent is dominated by that head
    for d, h in enumerate(s.heads, start=1):
        if h == 0:
            continue
        for k in range(min(d, h) + 1, max(d, h)):
            w = k
            while w not in (0, h):
                w = s.heads[w - 1]
            if w != h:
                problems.append(f"arc {h}->{d} is non-projective")
    return problems


def test_grammar_trees_valid_and_deterministic():
    tb = generate_treebank(300, seed=5)
    assert tb == generate_treebank(300, seed=5)
    assert tb != generate_treebank(300, seed=6)
    for s in tb:
        assert 4 <= s.n <= 30
        assert not _tree_problems(s), (s.text, _tree_problems(s))
        assert s.words[0][0].isupper() or s.words[0][0].isdigit()
        assert s.deprels[-1] == "punct" and s.heads[-1] == s.heads.index(0) + 1  # final "." on the root
        assert s.deprels[s.heads.index(0)] == "root"
    lengths = [s.n for s in tb]
    assert min(lengths) <= 6 and max(lengths) >= 22


def test_grammar_relation_coverage():
    counts = collections.Counter(r for s in generate_treebank(300, seed=0) for r in s.deprels)
    assert set(counts) == RELATIONS
    assert {"det", "amod", "nsubj", "obj", "case", "obl", "nmod", "nmod:poss", "compound", "advmod",
            "aux", "cop", "cc", "conj", "mark", "advcl", "ccomp", "xcomp", "punct", "root"} <= set(counts)


def test_grammar_agreement_and_punctuation():
    tb = generate_treebank(400, seed=1)
    punct = {w for s in tb for w, r in zip(s.words, s.deprels) if r == "punct"}
    assert punct == {".", ","}
    for s in tb:
        for d, (w, r, h) in enumerate(zip(s.words, s.deprels, s.heads)):
            # a simple-present verb agrees with a plain plural/singular pronoun subject
            if r == "nsubj" and w.lower() in ("they", "we") and s.upos[h - 1] == "VERB":
                assert s.words[h - 1] not in ("eats", "sleeps", "runs", "reads", "sees")
            if w.lower() in ("is", "was", "has") and r in ("aux", "cop"):
                subj = [k for k, (rr, hh) in enumerate(zip(s.deprels, s.heads)) if rr == "nsubj" and hh == h]
                assert all(s.words[k].lower() not in ("they", "we", "you") for k in subj), s.text
        assert s.text == "".join(w + ("" if m else " ") for w, m in zip(s.words, s.misc)).strip()


HANDMADE_RELATIONS = {
    "root", "nsubj", "obj", "iobj", "obl", "obl:agent", "nmod", "nmod:poss", "amod", "det", "nummod",
    "compound", "case", "advmod", "aux", "aux:pass", "nsubj:pass", "cop", "cc", "conj", "mark", "advcl",
    "ccomp", "xcomp", "acl", "acl:relcl", "appos", "flat", "expl", "punct",
}


def test_handmade_sample():
    hand = read_conllu(sample_path())
    assert len(hand) == 28
    assert [s.doc_id for s in hand].count("handmade-science") == 10
    assert len({s.doc_id for s in hand}) == 3
    assert set(r for s in hand for r in s.deprels) == HANDMADE_RELATIONS
    for s in hand:
        assert s.sent_id and s.text and not _tree_problems(s), s.sent_id
    cant = next(s for s in hand if "can't" in s.text)
    assert cant.words[:4] == ["We", "ca", "n't", "buy"]
    assert any("," in s.words for s in hand)
    assert any(w in ("unaffordable", "photosynthesis", "Photosynthesis") for s in hand for w in s.words)


def test_load_sample():
    dev = load_treebank("sample")
    assert len(dev) == 28 + 400 and dev[0].sent_id == "handmade-bakery-1"
    assert dev[28:] == generate_treebank(400, seed=0)
    test = load_treebank("sample", "test", seed=2)
    assert test == generate_treebank(400, seed=3)
    capped = load_treebank("sample", max_words=8, limit=10)
    assert len(capped) == 10 and all(s.n <= 8 for s in capped)
    assert capped.n_read == 428 and capped.n_too_long == sum(s.n > 8 for s in dev)
    with pytest.raises(ValueError):
        load_treebank("sample", "validation")
    with pytest.raises(FileNotFoundError, match="neither a known treebank"):
        load_treebank("no/such/file.conllu")


def test_load_path(tmp_path):
    p = tmp_path / "mine.conllu"
    p.write_text(MWT)
    tb = load_treebank(str(p))
    assert [s.sent_id for s in tb] == ["s1", "s2"]


def test_to_dataset():
    sents = read_conllu(sample_path())[:3]
    ds = to_dataset(sents)
    assert ds.column_names == ["words", "heads", "deprels", "upos", "sent_id", "doc_id"]
    assert len(ds) == 3
    assert ds[0]["words"] == sents[0].words and ds[0]["heads"] == sents[0].heads
    assert ds[2]["doc_id"] == "handmade-bakery"


def _s(i: int, doc: str | None) -> Sentence:
    return Sentence([f"w{i}"], [0], ["root"], ["X"], sent_id=str(i), doc_id=doc)


def test_sentence_pairs_rule():
    ids = lambda pairs: [(a.sent_id, b.sent_id) for a, b in pairs]
    plain = [_s(i, None) for i in range(5)]
    assert ids(sentence_pairs(plain)) == [("0", "1"), ("2", "3")]
    # docs a: 0 1 2 | b: 3 | c: 4 5 -> within-doc (0,1), (4,5); leftovers 2 and 3 paired across docs
    docs = [_s(0, "a"), _s(1, "a"), _s(2, "a"), _s(3, "b"), _s(4, "c"), _s(5, "c")]
    assert ids(sentence_pairs(docs)) == [("0", "1"), ("2", "3"), ("4", "5")]
    assert ids(sentence_pairs(docs, cross_document=False)) == [("0", "1"), ("4", "5")]
    hand = read_conllu(sample_path())  # 10 + 10 + 8 sentences: every pair stays in its document
    pairs = sentence_pairs(hand)
    assert len(pairs) == 14 and all(a.doc_id == b.doc_id for a, b in pairs)
