"""The deviation register: declarations, option predicates, and the run header."""
import pytest

from bertology import fidelity


def test_option_deviation_applies_only_off_the_authors_value():
    fidelity.declare("test.study", "rank", "probe rank {rank} (authors: hidden size)", kind="option",
                     when=fidelity.option_differs("rank", "hidden"))
    fidelity.declare("test.study", "data", "UD instead of PTB")
    assert fidelity.lines("test.study", rank="hidden") == ["UD instead of PTB"]
    assert fidelity.lines("test.study", rank=128) == ["probe rank 128 (authors: hidden size)", "UD instead of PTB"]
    # a sub-study is included in its parent's lines, not the other way round
    fidelity.declare("test.study.sub", "x", "sub deviation")
    assert "sub deviation" in fidelity.lines("test.study", rank="hidden")
    assert fidelity.lines("test.study.sub") == ["sub deviation"]


def test_option_without_predicate_and_unknown_kind_are_refused():
    with pytest.raises(ValueError, match="needs `when`"):
        fidelity.declare("test.study", "bad", "x", kind="option")
    with pytest.raises(ValueError, match="kind must be"):
        fidelity.declare("test.study", "bad", "x", kind="whatever")


def test_every_declaration_names_where_the_authors_definition_was_read():
    df = fidelity.table()
    real = df[~df.study.str.startswith("test.")]
    missing = real[real.reference.str.strip() == ""]
    assert missing.empty, f"deviations without a reference: {missing[['study', 'key']].values.tolist()}"
    assert not real.duplicated(["study", "key"]).any()


def test_docs_register_is_current():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_fidelity_doc", root / "scripts" / "make_fidelity_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (root / "docs" / "fidelity.md").read_text(encoding="utf-8")
    assert mod.render(text) == text, "docs/fidelity.md is stale: run python scripts/make_fidelity_doc.py"
