"""Where a study departs from the authors' definition: one register, shown in every report header.

The default of every study is the authors' quantity (their released code where it exists, the
paper's text where it does not). What still differs is *declared* here, beside nothing else:

- a **method** deviation we could not avoid or chose to keep (e.g. UD instead of Stanford
  Dependencies for Clark's relation heads);
- a **named option**: an improvement of ours that a parameter turns on; it is a deviation only
  when the option is not at the authors' value.

Study modules declare their deviations at import time with :func:`declare`; a notebook asks for
the ones that apply to its run with ``run.method(study, **options)`` (see :mod:`bertology.notebook`),
which puts them into the report header under "Where this run deviates from the paper". Data
and model deviations that depend on the run (which treebank, which model) are recorded by the
notebook helpers that load them; method deviations come only from here, so the header cannot
forget one that the code knows of.

``table()`` lists every declaration of every study (``bertology deviations`` prints it), which
is what ``docs/fidelity.md`` is written from.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

#: The study modules that declare deviations (imported by :func:`table`).
STUDY_MODULES = (
    "attention", "syntax", "coref", "parser_probe", "clustering", "structural_probe", "minimal_pairs",
    "semantic_roles", "numeracy", "knowledge", "pruning",
)

KINDS = ("method", "option", "data", "objective")


@dataclass(frozen=True)
class Deviation:
    """One difference from the authors' definition.

    ``study``: dotted name, e.g. ``"clark.relations"``. ``key``: short id, unique within the study.
    ``text``: what we compute and what the authors computed; may use ``{option}`` fields filled
    from the run's options. ``reference``: where the authors' definition was read (repository
    and file, or paper section). ``when``: for ``kind="option"``, a predicate on the run's options
    telling whether this run uses our variant; ``None`` means the deviation always applies.
    """

    study: str
    key: str
    text: str
    kind: str = "method"
    reference: str = ""
    when: Callable[[dict], bool] | None = None

    def applies(self, options: dict) -> bool:
        return True if self.when is None else bool(self.when(options))

    def render(self, options: dict) -> str:
        try:
            return self.text.format(**options)
        except (KeyError, IndexError, ValueError):
            return self.text


_REGISTER: dict[tuple[str, str], Deviation] = {}


def declare(study: str, key: str, text: str, kind: str = "method", reference: str = "",
            when: Callable[[dict], bool] | None = None) -> Deviation:
    """Declare a deviation of ``study``; re-declaring the same ``(study, key)`` replaces it
    (module reloads in a notebook session stay harmless)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "option" and when is None:
        raise ValueError(f"{study}/{key}: an option deviation needs `when` (which option values deviate)")
    dev = Deviation(study, key, " ".join(text.split()), kind, reference, when)
    _REGISTER[(study, key)] = dev
    return dev


def option_differs(name: str, authors_value: Any) -> Callable[[dict], bool]:
    """``when`` predicate: the run's option ``name`` is set and differs from the authors' value."""
    return lambda options: name in options and options[name] != authors_value


def deviations(study: str, **options) -> list[Deviation]:
    """The declared deviations of ``study`` (and of its sub-studies ``study.*``) that apply to a
    run with these options, in declaration order."""
    studies()
    return [d for (s, _), d in _REGISTER.items()
            if (s == study or s.startswith(study + ".")) and d.applies(options)]


def lines(study: str, **options) -> list[str]:
    """Report-header lines for ``study`` under ``options``."""
    return [f"{d.render(options)}" for d in deviations(study, **options)]


def studies() -> list[str]:
    for name in STUDY_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return sorted({s for s, _ in _REGISTER})


def table() -> pd.DataFrame:
    """Every declared deviation of every study: ``study, key, kind, text, reference``."""
    studies()
    rows = [dict(study=d.study, key=d.key, kind=d.kind, text=d.text, reference=d.reference)
            for d in _REGISTER.values()]
    return pd.DataFrame(rows, columns=["study", "key", "kind", "text", "reference"])


def markdown(study: str | None = None) -> str:
    """``table()`` (or one study's rows) as a Markdown table: ``docs/fidelity.md``'s register."""
    df = table()
    if study:
        df = df[(df.study == study) | df.study.str.startswith(study + ".")]
    df = df[~df.study.str.startswith("test.")].sort_values(["study", "kind", "key"], kind="stable")
    out = ["| study | key | kind | deviation | authors' definition read from |", "|---|---|---|---|---|"]
    for r in df.itertuples():
        cell = r.text.replace("|", "\\|")
        out.append(f"| {r.study} | {r.key} | {r.kind} | {cell} | {r.reference.replace('|', '/')} |")
    return "\n".join(out)

