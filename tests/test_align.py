import numpy as np
import pytest
import torch

from bertology import align


def test_split_words_and_special_tokens(tokenizer):
    e = align.encode_words(tokenizer, ["The", "unaffordable", "house", "."], ["It", "1.06", "!"])
    assert e.tokens == ["[CLS]", "the", "una", "##ff", "##ord", "##able", "house", ".", "[SEP]",
                        "it", "1", ".", "06", "!", "[SEP]"]
    assert e.unit_of_token.tolist() == [0, 1, 2, 2, 2, 2, 3, 4, 5, 6, 7, 7, 7, 8, 9]
    assert e.unit_kind == ["cls", "word", "word", "word", "word", "sep", "word", "word", "word", "sep"]
    assert e.unit_word.tolist() == [-1, 0, 1, 2, 3, -1, 4, 5, 6, -1]
    assert e.unit_segment.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert e.token_type_ids.tolist() == [0] * 9 + [1] * 6
    assert e.unit_labels()[2] == "unaffordable" and e.pieces_per_unit().tolist()[2] == 4


def test_word_level_attention_sum_to_mean_from(tokenizer):
    e = align.encode_words(tokenizer, ["unaffordable", "house"])  # [CLS] una ##ff ##ord ##able house [SEP]
    T = e.n_tokens
    rng = np.random.default_rng(0)
    a = rng.random((T, T))
    a /= a.sum(1, keepdims=True)
    to, frm = align.pooling_matrices([e], T)
    w = align.word_level_attention(torch.tensor(a, dtype=torch.float32)[None, None, None], to, frm)[0, 0, 0].numpy()
    # by hand: unit 1 = pieces 1..4. to-unit = sum of columns, from-unit = mean of rows
    assert w.shape == (4, 4)
    assert np.isclose(w[0, 1], a[0, 1:5].sum(), atol=1e-6)
    assert np.isclose(w[1, 2], a[1:5, 5].mean(), atol=1e-6)
    assert np.isclose(w[1, 1], a[1:5, 1:5].sum(1).mean(), atol=1e-6)
    assert np.allclose(w.sum(1), 1.0, atol=1e-6)


def test_word_level_states_pooling(tokenizer):
    e = align.encode_words(tokenizer, ["unaffordable", "house"])
    T = e.n_tokens
    states = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1)  # state of piece t = t
    to, frm = align.pooling_matrices([e], T)
    mean = align.word_level_states(states, to, frm, [e], "mean")[0, 0, :, 0].tolist()
    first = align.word_level_states(states, to, frm, [e], "first")[0, 0, :, 0].tolist()
    last = align.word_level_states(states, to, frm, [e], "last")[0, 0, :, 0].tolist()
    assert mean == [0, 2.5, 5, 6] and first == [0, 1, 5, 6] and last == [0, 4, 5, 6]


def test_over_long_input_is_truncated_at_word_boundary(tokenizer):
    e = align.encode_words(tokenizer, ["unaffordable"] * 40, max_length=32)  # 4 pieces per word
    assert e.n_tokens <= 32 and e.n_words == 40 and e.n_words_kept == 7 and e.truncated
    assert e.unit_kind[-1] == "sep"
    with pytest.warns(UserWarning, match="1 of 2 inputs exceeded"):
        assert align.warn_truncated([e, align.encode_words(tokenizer, ["ok"])]) == 1


def test_empty_sentence_and_empty_words(tokenizer):
    with pytest.raises(align.AlignmentError, match="empty sentence"):
        align.encode_words(tokenizer, [])
    e = align.encode_words(tokenizer, ["a", "\u200b", "b"])  # zero-width space has no pieces
    assert e.n_words_kept == 3 and e.tokens[2] == "[UNK]"


def _same_encoding(a: align.Encoding, b: align.Encoding) -> None:
    assert a.tokens == b.tokens and a.unit_kind == b.unit_kind and a.words == b.words
    for name in ("input_ids", "token_type_ids", "unit_of_token", "unit_word", "unit_segment"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_words, a.n_words_kept) == (b.n_words, b.n_words_kept)


@pytest.mark.parametrize("arch", ["bert", "roberta", "albert"])
def test_encode_many_equals_one_at_a_time(arch, tokenizer):
    """The batched encoder gives encode_words' result for single inputs and pairs, words without
    pieces, and an input that must drop words, on WordPiece, byte-level BPE and unigram tokenizers."""
    from bertology import zoo

    texts = ["the house is unaffordable .", "It cost 1.06 million !", "numbers 12 345 6789 and 10000"] * 20
    tok = tokenizer if arch == "bert" else zoo.train_tokenizer(arch, texts, vocab_size=200)
    inputs = [(["The", "unaffordable", "house", "."], None),
              (["It", "\u200b", "cost", "1.06"], ["!", "house"]),
              (["12", "345", "6789"], None),
              (["unaffordable"] * 40, None),  # over max_length: words dropped from the end
              (["a"] * 3, ["unaffordable"] * 30),
              ([" ", "house"], None)]  # a blank word becomes the unknown token
    many = align.encode_many(tok, inputs, max_length=32, chunk=2)
    assert len(many) == len(inputs)
    for (a, b), e in zip(inputs, many):
        _same_encoding(e, align.encode_words(tok, a, b, max_length=32))
    assert many[3].truncated and many[4].truncated and not many[0].truncated
    assert many[5].words[0] == tok.unk_token
    if arch == "bert":  # byte-level BPE has pieces for a zero-width space
        assert many[1].tokens[2] == "[UNK]"


def test_encode_many_names_the_bad_input(tokenizer):
    with pytest.raises(align.AlignmentError, match="input 1: cannot encode an empty sentence"):
        align.encode_many(tokenizer, [(["ok"], None), ([], None)])
    assert align.empty_words(tokenizer, ["a", "\u200b", "", " ", "a"]) == {"\u200b", "", " "}
