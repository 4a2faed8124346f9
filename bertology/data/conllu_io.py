"""Reading and writing CoNLL-U treebanks as plain :class:`Sentence` values.

Parsing of fields is left to the ``conllu`` package; a quick pass of our own over the lines
comes first, because ``conllu`` reports neither line numbers nor tree errors, and a bad head
index found deep inside an analysis is much harder to trace than one found here.
"""
from __future__ import annotations

import io
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import conllu

__all__ = ["Sentence", "CoNLLUError", "read_conllu", "write_conllu"]


@dataclass
class Sentence:
    """One sentence of syntactic words (multiword-token lines and empty nodes removed).

    ``heads`` follow CoNLL-U: ``heads[i]`` is the 1-based index of word ``i``'s head, 0 for the root.
    ``misc`` holds each word's parsed MISC column (``None`` for ``_``), e.g. GUM's ``Entity=``.
    """

    words: list[str]
    heads: list[int]
    deprels: list[str]
    upos: list[str]
    sent_id: str | None = None
    text: str | None = None
    doc_id: str | None = None
    misc: list[dict | None] = field(default_factory=list)

    def __post_init__(self):
        if not self.misc:
            self.misc = [None] * len(self.words)
        lengths = {len(self.words), len(self.heads), len(self.deprels), len(self.upos), len(self.misc)}
        if len(lengths) != 1:
            raise ValueError(f"sentence {self.sent_id!r}: words, heads, deprels, upos and misc differ in length")

    @property
    def n(self) -> int:
        return len(self.words)


class CoNLLUError(ValueError):
    """Malformed CoNLL-U; the message names the file and 1-based line number."""

    def __init__(self, name: str, line: int | None, problem: str):
        self.name, self.line, self.problem = name, line, problem
        super().__init__(f"{name}, line {line}: {problem}" if line else f"{name}: {problem}")


_RANGE = re.compile(r"^(\d+)-(\d+)$")
_EMPTY = re.compile(r"^\d+\.\d+$")
_INT = re.compile(r"^\d+$")


@dataclass
class _Block:
    """Line numbers of one blank-line-separated block, as found by the validating pass."""
    first_line: int
    word_lines: list[int]  # line of each syntactic word, in order


def _validate(lines: list[str], name: str, limit: int | None = None) -> tuple[list[_Block], int]:
    """Check structure line by line; returns one _Block per block, aligned with conllu's sentences,
    and how many lines were read: all, or (``limit``) those up to the end of the ``limit``-th
    block that has words."""
    blocks: list[_Block] = []
    cur: _Block | None = None
    heads: list[int] = []

    def close():
        if cur is not None:
            _check_tree(cur, heads, name)
            blocks.append(cur)

    n_words = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            n_words += bool(cur is not None and cur.word_lines)
            close()
            cur, heads = None, []
            if limit is not None and n_words >= limit:
                return blocks, lineno
            continue
        if cur is None:
            cur = _Block(lineno, [])
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise CoNLLUError(name, lineno, f"expected 10 tab-separated columns, found {len(cols)}")
        if "  " in line:
            # conllu also splits fields at runs of two spaces; refuse rather than misread the line
            raise CoNLLUError(name, lineno, "two consecutive spaces inside a field")
        wid, head = cols[0], cols[6]
        if (m := _RANGE.match(wid)) and int(m[2]) < int(m[1]):
            raise CoNLLUError(name, lineno, f"multiword-token range {wid!r} ends before it starts")
        if m or _EMPTY.match(wid):
            continue  # multiword-token ranges and enhanced-graph empty nodes are not syntactic words
        if not _INT.match(wid):
            raise CoNLLUError(name, lineno, f"ID {wid!r} is not an integer, a range (3-4) or an empty node (5.1)")
        if int(wid) != len(cur.word_lines) + 1:
            raise CoNLLUError(name, lineno, f"word IDs not contiguous: expected {len(cur.word_lines) + 1}, found {wid}")
        if not _INT.match(head):
            raise CoNLLUError(name, lineno, f"HEAD {head!r} of word {wid} is not an integer")
        cur.word_lines.append(lineno)
        heads.append(int(head))
    close()
    return blocks, len(lines)


def _check_tree(block: _Block, heads: list[int], name: str) -> None:
    n = len(heads)
    if n == 0:
        return  # a comment-only block; it carries metadata (e.g. newdoc) but no sentence
    for i, h in enumerate(heads):
        if h > n:
            raise CoNLLUError(name, block.word_lines[i], f"HEAD {h} of word {i + 1} is out of range 0..{n}")
    roots = [i + 1 for i, h in enumerate(heads) if h == 0]
    if not roots:
        raise CoNLLUError(name, block.first_line, "sentence has no root (no word with HEAD 0)")
    if len(roots) > 1:
        raise CoNLLUError(name, block.word_lines[roots[1] - 1],
                          f"sentence has {len(roots)} roots (words {roots}); UD allows exactly one")
    # Every head chain must reach 0; a chain that revisits a word is a cycle.
    reaches_root = {0}
    for i in range(1, n + 1):
        chain, w = [], i
        while w not in reaches_root and w not in chain:
            chain.append(w)
            w = heads[w - 1]
        if w in reaches_root:
            reaches_root.update(chain)
        else:
            cycle = chain[chain.index(w):] + [w]
            raise CoNLLUError(name, block.word_lines[i - 1],
                              f"head chain of word {i} never reaches the root (cycle {' -> '.join(map(str, cycle))})")


# FEATS and DEPS are kept as raw strings: we never use them, and parsing DEPS is a fifth of the time.
_FIELD_PARSERS = {
    "feats": lambda cols, i: cols[i],
    "deps": lambda cols, i: cols[i],
    "misc": lambda cols, i: _parse_misc(cols[i]),
}


def read_conllu(source: str | os.PathLike, name: str | None = None, limit: int | None = None) -> list[Sentence]:
    """Read a CoNLL-U file (a path) or CoNLL-U text (a str containing a newline).

    ``doc_id`` comes from ``# newdoc id = ...`` and carries forward until the next ``# newdoc``.
    ``limit``: only the first ``limit`` sentences are read (and checked); the rest of the file is
    not parsed (UD English-EWT's train split: 3.7 s for its 12,544 sentences, 0.3 s for 500).
    Raises :class:`CoNLLUError` for malformed input, including input with no sentences.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    limit = None if limit is None else int(limit)
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not any(c in source for c in "\n\t")):
        path = Path(source)
        name = name or str(path)
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    else:
        name = name or "<string>"
        text = source
    # Split on "\n" only, as conllu does, so that our blocks line up with its sentences.
    lines = text.split("\n")
    blocks, n_lines = _validate(lines, name, limit)
    if not any(b.word_lines for b in blocks):
        raise CoNLLUError(name, None, "no sentences found (empty input)")
    if n_lines < len(lines):
        text = "\n".join(lines[:n_lines])

    sentences: list[Sentence] = []
    doc_id: str | None = None
    parsed = conllu.parse_incr(io.StringIO(text), field_parsers=_FIELD_PARSERS)
    for block in blocks:
        try:
            tl = next(parsed)
        except conllu.exceptions.ParseException as exc:
            raise CoNLLUError(name, block.first_line, f"in the sentence starting here: {exc}") from exc
        md = tl.metadata
        if "newdoc id" in md:
            doc_id = md["newdoc id"]
        elif "newdoc" in md:
            doc_id = None  # a new document without a name: do not carry the previous id into it
        toks = [t for t in tl if isinstance(t["id"], int)]
        if not toks:
            continue
        sentences.append(Sentence(
            words=[t["form"] for t in toks],
            heads=[t["head"] for t in toks],
            deprels=[t["deprel"] for t in toks],
            upos=[t["upos"] for t in toks],
            sent_id=md.get("sent_id"),
            text=md.get("text"),
            doc_id=doc_id,
            misc=[t["misc"] for t in toks],
        ))
    return sentences


def _parse_misc(value: str) -> dict | None:
    # conllu's own dict parser cuts a value at its second "="; split at the first one only
    if value in ("", "_"):
        return None
    out: dict = {}
    for part in value.split("|"):
        key, eq, val = part.partition("=")
        out[key] = val if eq else None
    return out


def _misc_str(m: dict | None) -> str:
    if not m:
        return "_"
    return "|".join(k if v is None else f"{k}={v}" for k, v in m.items())


def write_conllu(sentences: list[Sentence]) -> str:
    """CoNLL-U text for ``sentences``; LEMMA, XPOS, FEATS and DEPS are written as ``_``.

    A ``# newdoc id`` line is written wherever ``doc_id`` changes, so reading the text back
    gives equal sentences.
    """
    out: list[str] = []
    prev_doc: str | None = None
    for s in sentences:
        if s.doc_id is not None and s.doc_id != prev_doc:
            out.append(f"# newdoc id = {s.doc_id}")
        elif s.doc_id is None and prev_doc is not None:
            out.append("# newdoc")
        prev_doc = s.doc_id
        if s.sent_id is not None:
            out.append(f"# sent_id = {s.sent_id}")
        if s.text is not None:
            out.append(f"# text = {s.text}")
        for i in range(s.n):
            out.append("\t".join([str(i + 1), s.words[i], "_", s.upos[i], "_", "_",
                                  str(s.heads[i]), s.deprels[i], "_", _misc_str(s.misc[i])]))
        out.append("")
    return "\n".join(out) + ("\n" if out else "")
