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
