"""Small random checkpoints of the common BERT-style architectures, built offline.

The Hugging Face hub cannot be reached from every machine (CI, a course server behind a proxy),
but what users run is ``load_model("bert-base-uncased")`` and its cousins. This module builds
stand-ins for them: a tokenizer trained here with the ``tokenizers`` library on a little text
(UD sentences or anything else), a randomly initialised model of the requested architecture,
both saved with ``save_pretrained`` into a folder that :func:`bertology.models.load_model`
loads like any downloaded checkpoint. The weights are noise: these checkpoints test that every
code path works for an architecture (special tokens, piece markers, token-type ids, MLM heads),
never what a model knows.

Architectures (``ARCHITECTURES``) and their tokenizers, as their real checkpoints have them:

- ``bert`` / ``bert-cased``: WordPiece with ``##`` continuations, ``[CLS] [SEP] [MASK]``,
  lower-cased or not (BERT-base uncased / cased).
- ``distilbert``: BERT's WordPiece; no token-type ids.
- ``roberta``: byte-level BPE (``Ġ`` marks a preceding space), ``<s> </s> <mask>``, no
  token-type ids in use.
- ``electra``: WordPiece, uncased, the discriminator (no MLM head; ``mlm=True`` gives the
  generator-style ``ElectraForMaskedLM``).
- ``albert``: a SentencePiece-style Unigram model (``▁`` marks a word start), ``[CLS] [SEP]
  [MASK]``, lower-cased.

``shape="tiny"`` (2 layers × 2 heads × 32) keeps tests fast; ``shape="base"`` is 12 × 12 × 768
with the architecture's own default sizes, to measure what a real model costs.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

ARCHITECTURES = ("bert", "bert-cased", "distilbert", "roberta", "electra", "albert")

SHAPES = {
    "tiny": dict(layers=2, heads=2, hidden=32, intermediate=64),
    "base": dict(layers=12, heads=12, hidden=768, intermediate=3072),
}

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# every printable ASCII character gets a piece, whatever the training text held
_ALPHABET = [chr(c) for c in range(33, 127)]


def _wordpiece(texts: list[str], vocab_size: int, lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None if lowercase else False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=_BERT_SPECIALS,
                                                             continuing_subword_prefix="##", initial_alphabet=_ALPHABET))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def _byte_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_ROBERTA_SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")), add_prefix_space=False)
    return tok


def _unigram(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>"]
                                                           + ["[CLS]", "[SEP]", "[MASK]"], unk_token="<unk>",
                                                           initial_alphabet=_ALPHABET))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def train_tokenizer(arch: str, texts: Iterable[str], vocab_size: int = 3000):
    """A fast tokenizer of ``arch``'s kind (``transformers.PreTrainedTokenizerFast`` subclass)
    trained on ``texts``."""
    from transformers import (AlbertTokenizer, BertTokenizer, DistilBertTokenizer, ElectraTokenizer,
                              RobertaTokenizer)

    texts = list(texts)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if arch == "roberta":
        return RobertaTokenizer(tokenizer_object=_byte_bpe(texts, vocab_size), bos_token="<s>", eos_token="</s>",
                                sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                mask_token="<mask>", add_prefix_space=True)
    if arch == "albert":
        return AlbertTokenizer(tokenizer_object=_unigram(texts, vocab_size), unk_token="<unk>", pad_token="<pad>",
                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True)
    lowercase = arch != "bert-cased"
    cls = {"distilbert": DistilBertTokenizer, "electra": ElectraTokenizer}.get(arch, BertTokenizer)
    return cls(tokenizer_object=_wordpiece(texts, vocab_size, lowercase), unk_token="[UNK]", sep_token="[SEP]",
               pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", do_lower_case=lowercase)


def model_config(arch: str, tokenizer, shape: str = "tiny", max_length: int = 512):
    """The ``transformers`` config of a ``shape``-sized ``arch`` model for ``tokenizer``."""
    from transformers import AlbertConfig, BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    s = SHAPES[shape]
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if arch == "distilbert":
        return DistilBertConfig(n_layers=s["layers"], n_heads=s["heads"], dim=s["hidden"], hidden_dim=s["intermediate"],
                                max_position_embeddings=max_length, **common)
    sizes = dict(num_hidden_layers=s["layers"], num_attention_heads=s["heads"], hidden_size=s["hidden"],
                 intermediate_size=s["intermediate"], **common)
    if arch == "roberta":
        # RoBERTa's positions start after the padding index, hence the extra two rows
        return RobertaConfig(max_position_embeddings=max_length + 2, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, type_vocab_size=1, **sizes)
    if arch == "electra":
        return ElectraConfig(embedding_size=min(128, s["hidden"]), max_position_embeddings=max_length, **sizes)
    if arch == "albert":
        return AlbertConfig(embedding_size=min(128, s["hidden"]), max_position_embeddings=max_length, **sizes)
    return BertConfig(max_position_embeddings=max_length, **sizes)


def build_checkpoint(arch: str, out: str | Path, texts: Iterable[str], shape: str = "tiny", mlm: bool = True,
                     vocab_size: int = 3000, seed: int = 0, max_length: int = 512) -> Path:
    """Train a tokenizer on ``texts``, build a random ``arch`` model (with its masked-LM head when
    ``mlm``), save both into ``out`` and return it. ``load_model(out)`` then loads it like a
    downloaded checkpoint."""
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM

    out = Path(out)
    tokenizer = train_tokenizer(arch, texts, vocab_size)
    tokenizer.model_max_length = max_length
    config = model_config(arch, tokenizer, shape, max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (AutoModelForMaskedLM if mlm else AutoModel).from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def texts_from_treebank(name: str = "sample", split: str = "dev", limit: int | None = 2000) -> list[str]:
    """Sentences of a treebank as plain text, to train a zoo tokenizer on (default: the shipped sample)."""
    from .data import load_treebank

    return [" ".join(s.words) for s in load_treebank(name, split, limit=limit)]
