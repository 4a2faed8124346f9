"""The small public API: lazily imported names, and a head view of one sentence in one call."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import bertology as bt
from bertology import extract as ex
from bertology.views import decode_view_data, extract_view_data


def test_import_is_lazy_and_names_resolve():
    code = "import sys, bertology; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert bt.stream is ex.extract and bt.attention_of is ex.attention_of and bt.states is ex.states
    with pytest.raises(AttributeError):
        bt.no_such_name


def test_show_draws_the_models_own_attention_for_one_sentence(minilm):
    html = bt.show(minilm, "the cat sat").data
    (payload,) = extract_view_data(html).values()
    shown = decode_view_data(payload)
    enc = minilm.tokenizer("the cat sat", return_tensors="pt")
    with torch.inference_mode():
        direct = torch.stack(minilm.model(**enc.to(minilm.device), output_attentions=True).attentions, 1)[0]
    assert shown.shape == tuple(direct.shape) == (6, 12, 5, 5)
    np.testing.assert_allclose(shown, np.round(direct.cpu().numpy(), 2), atol=0.0051)
    assert '"[CLS]"' in html and '"cat"' in html


def test_show_pair_at_word_level_and_bad_input(minilm):
    item = ex.attention_of(minilm, "the cat", "it sat", level="word")
    assert item.encoding.unit_labels() == ["[CLS]", "the", "cat", "[SEP]", "it", "sat", "[SEP]"]
    np.testing.assert_allclose(item.attention.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        bt.show(minilm, "  ")
    with pytest.raises(ValueError, match="view must be"):
        bt.show(minilm, "a b", view="grid")
