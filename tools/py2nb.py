"""Round-trip notebooks and percent-format scripts (a dev convenience: the committed .ipynb
is the source of truth; scratch scripts live in the git-ignored ``notebooks/src/``).

    python tools/py2nb.py notebooks/00_baselines.ipynb notebooks/src/00_baselines.py   # export
    python tools/py2nb.py notebooks/src/00_baselines.py notebooks/00_baselines.ipynb   # build

Cells start with ``# %%`` (code), ``# %% [markdown]`` (markdown, lines prefixed ``# ``) or
``# %% tags=["parameters"]`` (the papermill parameters cell).
"""
import json
import re
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def convert(text: str):
    cells, kind, tags, buf = [], None, [], []

    def flush():
        if kind is None:
            return
        body = "\n".join(buf).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", ln) for ln in body.splitlines())
            cells.append(new_markdown_cell(body))
        else:
            c = new_code_cell(body)
            if tags:
                c.metadata["tags"] = tags
            cells.append(c)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            rest = line[4:].strip()
            kind = "markdown" if rest.startswith("[markdown]") else "code"
            m = re.search(r"tags=(\[.*\])", rest)
            tags = json.loads(m.group(1)) if m else []
            buf = []
        else:
            buf.append(line)
    flush()
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "advlab", "display_name": "Python (advlab)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def to_script(nb) -> str:
    out = []
    for c in nb.cells:
        if c.cell_type == "markdown":
            out.append("# %% [markdown]\n" + "\n".join(
                ("# " + ln).rstrip() for ln in c.source.splitlines()))
        else:
            tags = c.metadata.get("tags", [])
            out.append("# %%" + (f" tags={json.dumps(tags)}" if tags else "") + "\n" + c.source)
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    src, dest = sys.argv[1], sys.argv[2]
    if src.endswith(".ipynb"):
        open(dest, "w").write(to_script(nbformat.read(src, as_version=4)))
        print(f"wrote {dest}")
        sys.exit(0)
    nb = convert(open(src).read())
    for i, c in enumerate(nb.cells):  # stable ids keep diffs small
        c["id"] = str(i)  # the ids nbstripout writes, so `make lint` agrees
    nbformat.write(nb, dest)
    print(f"wrote {dest} ({len(nb.cells)} cells)")
