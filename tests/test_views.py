"""The self-contained head view (bertology.views) and the offline HTML export (report.html_exporter)."""
from __future__ import annotations

import json
import re

import nbformat
import numpy as np
import pytest

from bertology import plots, report, views

URL_IN_SRC_HREF = re.compile(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _attention(layers=6, heads=12, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(n, 0.3), size=(layers, heads, n)).astype(np.float32)


def _labels(n):
    return ["[CLS]"] + [f"word{i}" for i in range(1, n - 1)] + ["[SEP]"]


def test_no_external_urls_and_small():
    page = views.head_view_html(_attention(), _labels(40))
    assert not URL_IN_SRC_HREF.search(page)
    assert not re.search(r"https?://", page), "no URL at all in the view"
    assert report.external_loads(page) == []
    assert len(page.encode("utf-8")) < 200_000, len(page.encode("utf-8"))


@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_embedded_data_decodes_to_rounded_attention(decimals):
    att = _attention(layers=2, heads=3, n=7, seed=decimals)
    labels = ["[CLS]", "the", "</script>", "a&b", '"q"', "\u00e9t\u00e9", "[SEP]"]
    page = views.head_view_html(att, labels, decimals=decimals)
    (vid, payload), = views.extract_view_data(page).items()
    assert payload["labels"] == labels  # survives escaping for <script>
    assert page.count("</script>") == 2  # the label did not close the data block
    decoded = views.decode_view_data(payload)
    assert decoded.shape == att.shape
    np.testing.assert_allclose(decoded, np.round(att.astype(np.float64), decimals), atol=1e-12)
    # by hand, without the helper: base64 -> integers / scale
    import base64

    raw = np.frombuffer(base64.b64decode(payload["data"]), dtype="<" + payload["dtype"])
    assert payload["scale"] == 10 ** decimals
    assert raw[0] == round(float(att[0, 0, 0, 0]) * 10 ** decimals)


def test_unique_ids_and_explicit_id():
    att, labels = _attention(1, 2, 5), _labels(5)
    pages = [views.head_view_html(att, labels) for _ in range(20)]
    ids = [re.search(r'<div id="([^"]+)" class="bv-view"', p).group(1) for p in pages]
    assert len(set(ids)) == len(ids)
    for vid, page in zip(ids, pages):
        # the data block, the CSS and the script all refer to this view's id only
        assert f'id="{vid}-data"' in page and f"#{vid} " in page and f'"{vid}"' in page
        assert "__ID__" not in page and "#ID" not in page
    page = views.head_view_html(att, labels, element_id="my-view")
    assert 'id="my-view"' in page and 'id="my-view-data"' in page
    with pytest.raises(ValueError):
        views.head_view_html(att, labels, element_id='x" onload="alert(1)')


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        views.head_view_html(_attention(1, 1, 4), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        views.head_view_html(np.zeros((2, 3, 4)), ["a"] * 4)


def test_plots_head_view_returns_html():
    from IPython.display import HTML

    out = plots.head_view(_attention(2, 2, 6), _labels(6), sentence_b_start=3)
    assert isinstance(out, HTML)
    payload, = views.extract_view_data(out.data).values()
    assert payload["b"] == 3 and payload["layers"] == 2


def test_exporter_emits_no_cdn_tags():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    view = views.head_view_html(_attention(1, 2, 4), _labels(4))
    out = nbformat.v4.new_output("display_data", data={"text/html": view, "text/plain": "<HTML>"})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nA [paper link](https://example.org/paper) stays a link."),
        nbformat.v4.new_code_cell("view", outputs=[out]),
    ]
    body, _ = report.html_exporter().from_notebook_node(nb)
    assert report.external_loads(body) == []
    assert not re.search(r"<(?:script|link)\b[^>]*(?:src|href)\s*=\s*[\"']?(?:https?:)?//", body, re.I)
    for cdn in ("require.js", "mathjax", "mermaid", "html-manager", "cdnjs", "unpkg", "jsdelivr"):
        assert cdn not in body.lower(), cdn
    assert 'href="https://example.org/paper"' in body  # ordinary links are kept
    # the view survives nbconvert (which re-serializes the page): its data and its script
    assert views.extract_view_data(body) == views.extract_view_data(view)
    script = re.findall(r"<script>(.*?)</script>", view, re.S)[-1]
    assert script in body
    assert "<style" in body  # the lab CSS is inlined
    # the stock exporter does load from CDNs: the test would notice a template change
    from nbconvert import HTMLExporter

    stock, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    assert report.external_loads(stock)


def test_external_loads_detector():
    assert report.external_loads('<script src="https://x/y.js"></script>')
    assert report.external_loads("<link rel=stylesheet href=//cdn/x.css>")
    assert report.external_loads("<img alt='a' src='http://x/y.png'>")
    assert not report.external_loads('<a href="https://example.org">x</a>')
    assert not report.external_loads('<img src="data:image/png;base64,AAAA">')
    assert not report.external_loads('<script src="local.js"></script>')


def test_model_view_is_offline_small_and_decodes():
    from bertology.views import decode_view_data, extract_view_data, model_view_html

    rng = np.random.default_rng(0)
    att = rng.random((6, 12, 40, 40))
    att /= att.sum(-1, keepdims=True)
    page = model_view_html(att, [f"t{i}" for i in range(40)], element_id="mv-test")
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?://", page)
    assert len(page.encode()) < 200_000
    back = decode_view_data(extract_view_data(page)["mv-test"])
    assert np.array_equal(back, np.round(att, 2))
