import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "BERTOLOGY_DATA" not in os.environ and (SHARED / "MANIFEST.tsv").exists():
    os.environ["BERTOLOGY_DATA"] = str(SHARED)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def minilm():
    from bertology.models import load_model

    return load_model("minilm", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(minilm):
    return minilm.tokenizer


def pattern_cls_prev_uniform_last(layer, ids, mask):
    """Planted heads: 0 -> [CLS], 1 -> previous token (position 0 -> itself),
    2 -> uniform over the real tokens, 3 -> last real token (the final [SEP])."""
    B, T = ids.shape
    n = mask.sum(1)
    w = torch.zeros(B, 4, T, T)
    w[:, 0, :, 0] = 1.0
    idx = torch.arange(T)
    w[:, 1, idx[1:], idx[:-1]] = 1.0
    w[:, 1, 0, 0] = 1.0
    w[:, 2] = (mask[:, None, :].float() / n[:, None, None]).expand(B, T, T)
    w[torch.arange(B), 3, :, n - 1] = 1.0
    return w


@pytest.fixture
def planted(tokenizer):
    from bertology.models import plant_attention, random_bert

    return plant_attention(random_bert(tokenizer, n_layers=2, n_heads=4, mlm=True, seed=0),
                           pattern_cls_prev_uniform_last)


def plant_word_targets(loaded, sentences, targets_fn, n_heads):
    """Plant attention per input: ``targets_fn(sentence, encoding) -> (H, T, T)`` token-level maps.

    The pattern looks each input up by its word-piece ids, so batching and padding are real.
    """
    import numpy as np

    from bertology.extract import encode_inputs
    from bertology.models import plant_attention

    encs = encode_inputs(loaded.tokenizer, [s.words for s in sentences], loaded.info.max_length)
    table = {tuple(e.input_ids.tolist()): np.asarray(targets_fn(s, e), dtype=np.float32)
             for s, e in zip(sentences, encs)}

    def pattern(layer, ids, mask):
        B, T = ids.shape
        w = torch.zeros(B, n_heads, T, T)
        for b in range(B):
            n = int(mask[b].sum())
            t = torch.as_tensor(table[tuple(ids[b, :n].tolist())])
            w[b, :, :n, :n] = t
        return w

    return plant_attention(loaded, pattern), encs


def to_gold_head_and_previous(sentence, enc):
    """Head 0: every piece of word d attends to the first piece of d's gold head (root word and
    special tokens: to [CLS]). Head 1: every piece attends to the previous piece ([CLS] to itself)."""
    import numpy as np

    T = enc.n_tokens
    first_piece = {}
    for t, u in enumerate(enc.unit_of_token):
        w = enc.unit_word[u]
        if w >= 0 and w not in first_piece:
            first_piece[w] = t
    out = np.zeros((2, T, T))
    for t, u in enumerate(enc.unit_of_token):
        w = enc.unit_word[u]
        h = sentence.heads[w] - 1 if w >= 0 else -1
        out[0, t, first_piece[h] if h >= 0 else 0] = 1.0
        out[1, t, max(t - 1, 0)] = 1.0
    return out


def bias_only_mlm(tokenizer, biases: dict[str, float]):
    """A tiny BertForMaskedLM whose logits are the decoder bias at every position, whatever the input:
    the head's transform is zeroed (dense -> 0, GELU(0) = 0, LayerNorm bias 0), so logits = bias, with
    ``biases`` on the named tokens and 0 elsewhere."""
    import torch

    from bertology.models import random_bert

    m = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=8, mlm=True, seed=0)
    pred = m.model.cls.predictions
    with torch.no_grad():
        pred.transform.dense.weight.zero_()
        pred.transform.dense.bias.zero_()
        pred.transform.LayerNorm.bias.zero_()
        bias = torch.zeros(len(tokenizer))
        for w, v in biases.items():
            bias[tokenizer.convert_tokens_to_ids(w)] = v
        pred.decoder.bias.copy_(bias)
    return m


def run_quick(out, *notebooks: str, extra=()) -> int:
    """`bertology run --notebooks ... --quick` into ``out`` on the default model, as CI runs it."""
    from pathlib import Path

    from bertology import cli

    root = Path(__file__).resolve().parents[1]
    rc = cli.main(["run", "--notebooks", *notebooks, "--quick", "--out", str(out),
                   "--notebook-dir", str(root / "notebooks"), *extra])
    # a report is read by people: no progress bars or widget warnings in any executed HTML
    for page in Path(out).glob("*/*.html"):
        text = page.read_text(encoding="utf-8")
        for noise in ("it/s]", "s/it]", "IProgress not found"):
            assert noise not in text, f"{page.name} contains progress output {noise!r}"
    return rc
