"""Build ``bertology/data/registry.tsv`` from the data mirror's ``MANIFEST.tsv``.

Usage:  python scripts/make_registry.py /path/to/MANIFEST.tsv [--out bertology/data/registry.tsv]

The registry is our own metadata (where each file can be downloaded, its size, sha256 and
license); it holds no upstream content. URLs pin the upstream commit, so a file's bytes can
never drift away from the recorded sha256.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from urllib.parse import quote

COLUMNS = ["dataset", "file", "bytes", "sha256", "url", "license"]

# Files whose MANIFEST upstream_path is a description rather than a path, because the mirror
# assembled them (see the dataset's SOURCE.md). They get the released file's URL instead.
URL_OVERRIDES = {
    ("ud-english-ewt", "en_ewt-ud-train.conllu"):
        "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/en_ewt-ud-train.conllu",
}


def _is_plain_path(p: str) -> bool:
    return bool(p) and not any(c in p for c in " *?\t") and not p.startswith("/")


def build_rows(manifest: Path) -> list[dict[str, str]]:
    rows = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            key = (rec["dataset"], rec["file"])
            if key in URL_OVERRIDES:
                url = URL_OVERRIDES[key]
            elif _is_plain_path(rec["upstream_path"]):
                url = ("https://raw.githubusercontent.com/"
                       f"{rec['upstream_repo']}/{rec['upstream_commit']}/{quote(rec['upstream_path'])}")
            else:
                raise SystemExit(f"{manifest}: no URL for {key}: upstream_path "
                                 f"{rec['upstream_path']!r} is not a plain path; add it to URL_OVERRIDES")
            rows.append({"dataset": rec["dataset"], "file": rec["file"], "bytes": str(int(rec["bytes"])),
                         "sha256": rec["sha256"].lower(), "url": url, "license": rec["license"]})
    # Sorted so that regenerating from a reordered manifest gives a byte-identical file.
    rows.sort(key=lambda r: (r["dataset"], r["file"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "bertology" / "data" / "registry.tsv")
    args = ap.parse_args(argv)
    rows = build_rows(args.manifest)
    lines = ["\t".join(COLUMNS)] + ["\t".join(r[c] for c in COLUMNS) for r in rows]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} entries to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
