"""Any UD language, Korean first (issue 14): treebank names, Korean alignment, counts, notebooks.

The hand-checked sentence is UD Korean-GSD dev-s1 (the first sentence of ko_gsd-ud-dev.conllu):

    1  제일        ADV  head 2  advmod
    2  가까운      ADJ  head 3  amod
    3  스타벅스가  NOUN head 5  nsubj
    4  어디        ADV  head 5  advmod
    5  있지        ADJ  head 0  root

Every word is an eojeol (the file has no multiword-token lines); it is copied below so the unit
tests need no mirror.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bertology import align, syntax
from bertology.attention import AttentionPatterns
from bertology.data import (
    DataUnavailableError, UnknownDatasetError, is_punct, load_treebank, read_conllu, treebank_info,
)
from bertology.extract import Item

DEV_S1 = """# sent_id = dev-s1
# text = 제일 가까운 스타벅스가 어디 있지
1\t제일\t제일\tADV\tNNG\t_\t2\tadvmod\t_\t_
2\t가까운\t가깝+ㄴ\tADJ\tVA+ETM\t_\t3\tamod\t_\t_
3\t스타벅스가\t스타벅스+가\tNOUN\tNNG+JKS\t_\t5\tnsubj\t_\t_
4\t어디\t어디\tADV\tNP\t_\t5\tadvmod\t_\t_
5\t있지\t있+지\tADJ\tVV+EC\t_\t0\troot\t_\t_
"""

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _wrap(tok, **special):
    """A transformers fast tokenizer around a ``tokenizers.Tokenizer`` with a BERT-style template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    cls, sep = special.get("cls", "[CLS]"), special.get("sep", "[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=special.get("unk", "[UNK]"), cls_token=cls,
                                   sep_token=sep, pad_token=special.get("pad", "[PAD]"), mask_token="[MASK]")


def _wordpiece(vocab: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(SPECIALS + vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return _wrap(tok)


@pytest.fixture(scope="module")
def sentence():
    return read_conllu(DEV_S1)[0]


@pytest.fixture(scope="module")
def hand_tokenizer():
    # 제일 and 가까운 are whole pieces; 스타벅스가 splits into 스타 ##벅스 ##가, 있지 into 있 ##지; 어디 is missing
    return _wordpiece(["제일", "가까운", "스타", "##벅스", "##가", "있", "##지", "."])


# ----------------------------------------------------------------------------- names and languages

def test_ud_spellings_and_language():
    ko = treebank_info("ud:ko_gsd")
    assert ko == treebank_info("ko_gsd")
    assert (ko.title, ko.language, ko.language_code, ko.dataset) == ("UD Korean GSD", "Korean", "ko", "ud-korean-gsd")
    assert ko.splits == ("dev", "test") and not ko.english  # the mirror has no train file
    assert treebank_info("ud:en_ewt") == treebank_info("ewt") and treebank_info("ewt").english
    assert treebank_info("gum").splits == ("dev", "test")
    assert treebank_info("/x/ko_gsd-ud-dev.conllu").language_code == "ko"
    with pytest.raises(UnknownDatasetError, match="registry.tsv"):
        treebank_info("ud:xx_nothing")


def _korean(split="dev", **kw):
    try:
        return load_treebank("ud:ko_gsd", split, **kw)
    except DataUnavailableError:
        pytest.skip("UD Korean GSD not available (set BERTOLOGY_DATA to the mirror)")


def test_korean_gsd_counts_and_inventory():
    dev = _korean()
    # counted on the mirror (950 sentences; word lines of ko_gsd-ud-dev.conllu, no multiword tokens)
    assert (len(dev), sum(s.n for s in dev)) == (950, 11958)
    assert dev[0].words == ["제일", "가까운", "스타벅스가", "어디", "있지"]
    inv = syntax.relation_inventory(dev, min_count=100)
    assert len(inv) == 16 and inv.iloc[0].tolist() == ["flat", 1852]
    assert dict(zip(inv.relation, inv.n))["punct"] == sum(is_punct(s).sum() for s in dev) == 1583
    assert len(syntax.relation_inventory(dev)) == 31


def test_train_split_from_dev_is_disjoint_and_noted():
    with pytest.raises(ValueError, match="splits"):
        _korean("train")
    train = _korean("train", train_from_dev=50, limit=10)
    dev = _korean("dev", limit=60)
    assert [s.sent_id for s in train] == [s.sent_id for s in dev[50:60]]
    assert train.split == "train (from dev)" and "after the first 50" in train.note


# ----------------------------------------------------------------------------- the hand-checked sentence

def test_hand_checked_sentence_relations(sentence):
    inv = syntax.relation_inventory([sentence])
    assert list(zip(inv.relation, inv.n)) == [("advmod", 2), ("amod", 1), ("nsubj", 1), ("root", 1)]
    # offsets (CoNLL-U numbering, prediction clip(i + o + 1, 0, 5) for 0-based word i); gold heads 2 3 5 5 0
    pred = syntax.offset_predictions(5, offsets=(-1, 1))
    assert pred.tolist() == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 5]]
    ok = syntax.score_predictions(pred, sentence, 5)
    assert ok.sum(1).tolist() == [0, 3]  # +1 is right for words 1, 2, 4


def test_korean_alignment_on_hand_vocabulary(hand_tokenizer, sentence):
    e = align.encode_words(hand_tokenizer, sentence.words)
    assert e.tokens == ["[CLS]", "제일", "가까운", "스타", "##벅스", "##가", "[UNK]", "있", "##지", "[SEP]"]
    assert e.unit_of_token.tolist() == [0, 1, 2, 3, 3, 3, 4, 5, 5, 6]
    assert e.unit_word.tolist() == [-1, 0, 1, 2, 3, 4, -1]
    assert e.pieces_per_unit().tolist() == [1, 1, 1, 3, 1, 2, 1]
    # pair input: segment B's words continue the numbering
    p = align.encode_words(hand_tokenizer, sentence.words[:3], sentence.words[3:])
    assert p.unit_word.tolist() == [-1, 0, 1, 2, -1, 3, 4, -1] and p.unit_segment.tolist() == [0] * 5 + [1] * 3
    # word level: attention to 스타벅스가 sums its three pieces, attention from it averages them
    T = e.n_tokens
    a = np.random.default_rng(0).random((T, T))
    a /= a.sum(1, keepdims=True)
    to, frm = align.pooling_matrices([e], T)
    w = align.word_level_attention(torch.tensor(a, dtype=torch.float32)[None, None, None], to, frm)[0, 0, 0].numpy()
    assert np.isclose(w[1, 3], a[1, 3:6].sum(), atol=1e-6)
    assert np.isclose(w[3, 5], a[3:6, 7:9].sum(1).mean(), atol=1e-6)
    assert np.allclose(w.sum(1), 1.0, atol=1e-6)


def test_unknown_rate_and_note(hand_tokenizer, sentence):
    rate = align.unknown_rate(hand_tokenizer, [sentence.words])
    # 어디 is not in the vocabulary: 1 word of 5, 1 piece of 8 (1 + 1 + 3 + 1 + 2)
    assert (rate["unknown_words"], rate["words"], rate["unknown_pieces"], rate["pieces"]) == (1, 5, 1, 8)
    assert rate["word_rate"] == pytest.approx(0.2)
    assert "20.0%" in align.vocabulary_note(rate, "toy", "Korean")
    assert rate["rewritten_words"] == 0  # a cased normalizer leaves Hangul alone
    assert align.vocabulary_note(align.unknown_rate(hand_tokenizer, [sentence.words[:3]]), "toy") is None


def test_uncased_normalizer_splitting_hangul_is_noted(sentence):
    import unicodedata

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    # an uncased BERT normalizer (NFD + accent stripping) turns 제일 into 5 jamo: ㅈ ㅔ + ㅇ ㅣ ㄹ
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(SPECIALS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rate = align.unknown_rate(_wrap(tok), [sentence.words])
    assert (rate["rewritten_words"], rate["unknown_words"]) == (5, 5)
    word, norm = rate["rewritten_example"]
    assert word == "제일" and len(norm) == 5 and unicodedata.normalize("NFC", norm) == "제일"
    assert "splits Hangul syllables into jamo" in align.vocabulary_note(rate, "toy", "Korean")


def test_roberta_style_pair_with_two_separators():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # XLM-R / RoBERTa inputs: <s> A </s></s> B </s>; both middle separators are units of their own
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "제일", "가까운", "스타벅스가"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", cls_token="<s>", sep_token="</s>",
                                 pad_token="<pad>")
    e = align.encode_words(hf, ["제일", "가까운"], ["스타벅스가"])
    assert e.tokens == ["<s>", "제일", "가까운", "</s>", "</s>", "스타벅스가", "</s>"]
    assert e.unit_kind == ["cls", "word", "word", "sep", "sep", "word", "sep"]
    assert e.unit_word.tolist() == [-1, 0, 1, -1, -1, 2, -1]
    assert e.unit_segment.tolist() == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece", "bytelevel"])
def test_pieces_spell_each_korean_word(kind):
    """Whatever the tokenizer family, the pieces aligned to a word spell exactly that word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    dev = _korean(limit=200)
    text = [" ".join(s.words) for s in dev]
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=800, special_tokens=SPECIALS)
    elif kind == "sentencepiece":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=800, special_tokens=SPECIALS, unk_token="[UNK]")
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    hf = _wrap(tok)
    n_split = 0
    for s in dev[:30]:
        e = align.encode_words(hf, s.words)
        assert e.n_words_kept == s.n
        for u, w in zip(e.word_units, range(s.n)):
            pieces = [e.tokens[t] for t in np.flatnonzero(e.unit_of_token == u)]
            n_split += len(pieces) > 1
            # (WordPiece's decoder puts spaces where BertPreTokenizer split at punctuation, e.g. e-gima.com)
            assert hf.convert_tokens_to_string(pieces).replace(" ", "") == s.words[w], (kind, pieces)
    assert n_split > 50  # most eojeols are several pieces with a vocabulary this small


def test_punctuation_from_upos_at_token_level(hand_tokenizer):
    s = read_conllu(DEV_S1.replace("5\t있지\t있+지\tADJ\tVV+EC\t_\t0\troot\t_\t_",
                                   "5\t있지\t있+지\tADJ\tVV+EC\t_\t0\troot\t_\t_\n6\t.\t.\tPUNCT\tSF\t_\t5\tpunct\t_\t_"))[0]
    assert is_punct(s).tolist() == [False] * 5 + [True]
    e = align.token_level(align.encode_words(hand_tokenizer, s.words))
    T = e.n_tokens  # [CLS] 제일 가까운 스타 ##벅스 ##가 [UNK] 있 ##지 . [SEP]
    a = np.full((1, 1, T, T), 1.0 / T)
    upos = AttentionPatterns(1, 1, punct_upos=[s.upos])
    upos.update(Item(0, e, a, None))
    r = upos.result().set_index("metric").value
    assert r["to_punct"] == pytest.approx(1.0 / T)  # one piece ('.') of the PUNCT word
    assert upos.options["punct"] == "upos"
    assert "punct" not in AttentionPatterns(1, 1).options


# ----------------------------------------------------------------------------- the index across languages

def _fake_run(out, slug, stem, model, lang, tables):
    (out / slug / stem).mkdir(parents=True)
    (out / slug / f"{stem}.html").write_text("<html></html>", encoding="utf-8")
    meta = {"model": model, "language": {"code": lang[0], "name": lang[1]}, "treebank": "x", "data": "x"}
    (out / slug / stem / "results.json").write_text(json.dumps({"meta": meta, "tables": tables}), encoding="utf-8")


def test_languages_side_by_side(tmp_path):
    from bertology import report

    best = lambda rows: [{"relation": r, "layer": 0, "head": 0, "label": h, "accuracy": a, "n": 30} for r, h, a in rows]
    probe = lambda m, vals: [{"model": m, "layer": i, "metric": "uuas", "value": v} for i, v in enumerate(vals)] + [
        {"model": "random-init control", "layer": 0, "metric": "uuas", "value": 0.1}]
    _fake_run(tmp_path, "en-model", "02_attention_heads_syntax", "en-model", ("en", "English"),
              {"relation_heads_best": best([("all", "3-2", 0.4), ("det", "3-9", 0.8), ("nsubj", "2-1", 0.5)])})
    _fake_run(tmp_path, "ko-model", "02_attention_heads_syntax", "ko-model", ("ko", "Korean"),
              {"relation_heads_best": best([("all", "1-1", 0.3), ("nsubj", "1-2", 0.2), ("flat", "2-2", 0.6)])})
    _fake_run(tmp_path, "ko-model", "04_syntax_probes", "ko-model", ("ko", "Korean"),
              {"structural_probe": probe("ko-model", [0.2, 0.3])})
    _fake_run(tmp_path, "en-model", "04_syntax_probes", "en-model", ("en", "English"),
              {"structural_probe": probe("en-model", [0.25, 0.5])})
    comp = report.language_comparison(tmp_path)
    rel = comp["relations"]
    assert sorted(set(rel.relation)) == ["all", "nsubj"]  # det (English only) and flat (Korean only) left out
    assert rel[(rel.relation == "nsubj") & (rel.language == "Korean (ko)")]["label"].tolist() == ["1-2"]
    uuas = comp["uuas"]
    assert len(uuas) == 4 and "random-init control" not in set(uuas.model)
    page = report.write_index(tmp_path).read_text(encoding="utf-8")
    assert "Languages side by side" in page and "1-2: 0.200" in page and "0.500" in page
    # one language only: nothing to compare
    one = tmp_path / "one"
    _fake_run(one, "ko-model", "02_attention_heads_syntax", "ko-model", ("ko", "Korean"),
              {"relation_heads_best": best([("all", "1-1", 0.3)])})
    assert report.language_comparison(one)["relations"].empty
    # results written before the rename (head = the label, count) are read the same way
    old = tmp_path / "old"
    for slug, lang, rows in [("en-model", ("en", "English"), [("all", "3-2", 0.4)]), ("ko-model", ("ko", "Korean"), [("all", "1-1", 0.3)])]:
        _fake_run(old, slug, "02_attention_heads_syntax", slug, lang,
                  {"relation_heads_best": [{"relation": r, "head": h, "accuracy": a, "count": 30} for r, h, a in rows]})
    assert report.language_comparison(old)["relations"][["label", "n"]].values.tolist() == [["3-2", 30], ["1-1", 30]]


# ----------------------------------------------------------------------------- notebooks on a Korean model

@pytest.fixture(scope="module")
def korean_bert(tmp_path_factory):
    """A 2-layer, 2-head, 32-wide random BERT whose WordPiece vocabulary is trained here on Korean GSD."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    text = [" ".join(s.words) for split in ("dev", "test") for s in _korean(split)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    tok.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=SPECIALS, min_frequency=2))
    hf = _wrap(tok)
    hf = BertTokenizerFast(tokenizer_object=hf.backend_tokenizer, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                           pad_token="[PAD]", mask_token="[MASK]", model_max_length=128, do_lower_case=False)
    out = tmp_path_factory.mktemp("korean-bert")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=len(hf), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(out)
    hf.save_pretrained(out)
    return out


def test_notebooks_02_03_04_on_korean(tmp_path, korean_bert):
    from conftest import run_quick

    out = tmp_path / "reports"
    rc = run_quick(out, "02", "03", "04", extra=["--model", str(korean_bert), "-p", "data=ko_gsd"])
    assert rc == 0
    slug = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    r02 = json.loads((slug / "02_attention_heads_syntax" / "results.json").read_text(encoding="utf-8"))
    meta = r02["meta"]
    assert meta["language"] == {"code": "ko", "name": "Korean"} and meta["data"] == "UD Korean GSD (dev)"
    # every character of the text is in the trained alphabet: no word has an unknown piece
    assert r02["values"]["unknown_rate"]["dev"]["unknown_words"] == 0
    assert any(n.startswith("Coreference skipped") for n in meta["notes"])
    assert any("no train split" in n for n in meta["notes"])
    assert sum("UD Korean GSD (language ko" in d for d in meta["deviations"]) == 2  # relations and probe
    assert not any("English EWT" in d for d in meta["deviations"])
    inv = pd.DataFrame(r02["tables"]["relation_inventory"])
    assert inv.n.min() >= 20 and {"nsubj", "obj", "flat"} <= set(inv.relation)  # quick mode: min_count 20
    assert "stanford" not in r02["tables"]["relation_heads_best"][0]
    page = (slug / "02_attention_heads_syntax.html").read_text(encoding="utf-8")
    assert "Korean (ko), UD Korean GSD" in page
    r03 = json.loads((slug / "03_head_clustering" / "results.json").read_text(encoding="utf-8"))
    assert r03["meta"]["methods"]["clark.patterns"]["punct"] == "upos"
    r04 = json.loads((slug / "04_syntax_probes" / "results.json").read_text(encoding="utf-8"))
    assert any("after the first 50, which stay held out" in n for n in r04["meta"]["notes"])  # quick: n_dev = 50
    assert r04["meta"]["sizes"]["n_train"] == 150 and r04["meta"]["language"]["code"] == "ko"
    uuas = [r for r in r04["tables"]["structural_probe"] if r["metric"] == "uuas"]
    control = {r["layer"] for r in uuas if r["model"] == "random-init control"}
    assert control == set(r04["values"]["control_layers"])  # the control at the model's best layers only
    assert len(uuas) == 3 + len(control) and all(0 <= r["value"] <= 1 for r in uuas)  # model at layers 0-2
