"""Rewrite the generated register section of docs/fidelity.md from bertology.fidelity."""
from pathlib import Path

from bertology import fidelity

START, END = "<!-- register:start -->", "<!-- register:end -->"


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{fidelity.markdown()}\n{END}{tail}"


if __name__ == "__main__":
    doc = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
    doc.write_text(render(doc.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {doc}")
