"""Write a clean, parameterized notebook (no outputs, kernelspec.language set) from (kind, source) cells.

kinds: "md" (markdown), "params" (the one papermill `parameters` cell), "code". Used by throwaway
builder scripts: build("notebooks/NN_name.ipynb", cells)."""
import sys, nbformat
from nbformat.v4 import new_notebook, new_markdown_cell, new_code_cell
def build(path, cells):
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md": nb.cells.append(new_markdown_cell(src))
        else:
            c = new_code_cell(src)
            if kind == "params": c.metadata["tags"] = ["parameters"]
            nb.cells.append(c)
    for c in nb.cells: c.pop("id", None)
    nb.nbformat_minor = 4
    nbformat.write(nb, path)
