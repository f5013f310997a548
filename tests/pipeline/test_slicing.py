"""No notebook slices a dataset array: ``x[:n]`` on images loaded from a dataset (or on any
subset that keeps their order) takes the first classes only when the arrays are sorted by class,
as MNIST-5k's are.  Subsets come from ``data.stratified_indices`` / ``stratified_subset``.

The check follows, cell after cell, which names hold dataset-ordered arrays: the results of the
data helpers (``load_dataset``, ``load_arrays``, ``train_val_test``, ``stratified_subset``,
``stratified_indices``: their indices are sorted, so their subsets stay in class order), and
whatever keeps that order (a constant or string index, a slice, an index that is itself
dataset-ordered, an order-keeping mask, ``.to()``-style methods).  An index of unknown order
(a seeded permutation, a mask picking one class with ``==``) ends the trail.  It flags a
slice with a bound on the first axis of such an array, except ``[:1]`` (one example, e.g. to
probe a shape).
"""
import ast
import json

import pytest

from ..conftest import ROOT

DATA_FUNCS = {"load_dataset", "load_arrays", "train_val_test", "stratified_subset",
              "stratified_indices"}
KEEPS_ORDER = {"to", "float", "double", "long", "cpu", "cuda", "clone", "detach", "contiguous",
               "flatten", "view", "reshape", "unsqueeze", "squeeze", "nonzero", "requires_grad_"}


def _bounded_slice(s) -> bool:
    if isinstance(s, ast.Tuple) and s.elts:
        s = s.elts[0]
    if not isinstance(s, ast.Slice) or (s.lower is None and s.upper is None):
        return False
    one = s.lower is None and isinstance(s.upper, ast.Constant) and s.upper.value == 1
    return not one


class Tracker(ast.NodeVisitor):
    def __init__(self):
        self.ordered: set[str] = set()
        self.found: list[tuple[int, int, str]] = []  # (cell, line, source)
        self.cell = 0

    # ---- which expressions hold dataset-ordered arrays
    def ordered_expr(self, e) -> bool:
        if isinstance(e, ast.Name):
            return e.id in self.ordered
        if isinstance(e, ast.Starred):
            return self.ordered_expr(e.value)
        if isinstance(e, ast.Call):
            f = e.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in DATA_FUNCS:
                return True
            return isinstance(f, ast.Attribute) and f.attr in KEEPS_ORDER and \
                self.ordered_expr(f.value)
        if isinstance(e, ast.Compare):
            single_class = any(isinstance(op, ast.Eq) for op in e.ops)
            return not single_class and any(self.ordered_expr(x)
                                            for x in [e.left, *e.comparators])
        if isinstance(e, ast.Subscript):
            s = e.slice
            if isinstance(s, (ast.Slice, ast.Tuple)) or \
                    (isinstance(s, ast.Constant) and isinstance(s.value, (int, str))):
                return self.ordered_expr(e.value)
            if self.ordered_expr(s):        # a class-ordered index (or order-keeping mask)
                return True
            return False                    # an index of unknown order (a permutation, ...)
        return False

    def _bind(self, target, value):
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                for t, v in zip(target.elts, value.elts):
                    self._bind(t, v)
            else:
                for t in target.elts:
                    self._bind(t, value)
        elif isinstance(target, ast.Name):
            (self.ordered.add if self.ordered_expr(value) else self.ordered.discard)(target.id)

    # ---- visiting
    def visit_Assign(self, node):
        self.generic_visit(node)
        for t in node.targets:
            self._bind(t, node.value)

    def visit_Subscript(self, node):
        if _bounded_slice(node.slice) and self.ordered_expr(node.value):
            self.found.append((self.cell, node.lineno, ast.unparse(node)))
        self.generic_visit(node)


def slices_in_cells(cells: list[str]) -> list[tuple[int, int, str]]:
    """(cell number counting code cells from 1, line in the cell, the slice) for every slice
    of a dataset-ordered array in ``cells`` (code, in order)."""
    t = Tracker()
    for i, src in enumerate(cells, 1):
        t.cell = i
        lines = [ln if not ln.lstrip().startswith(("%", "!")) else "" for ln in src.splitlines()]
        t.visit(ast.parse("\n".join(lines)))
    return t.found


def notebook_cells(stage: str) -> list[str]:
    nb = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


# --------------------------------------------------------------------------- the check itself
PLANTED = [
    ("xtr, ytr = data.load_dataset('mnist5k', 'train')\nxb = xtr[:64]", "xtr[:64]"),
    ("split = data.train_val_test(d, 10, 5, 10, 0)\nx_train, y_train = split['train']\n"
     "xb = x_train[:batch_size].to(dev)", "x_train[:batch_size]"),
    ("x, y = data.stratified_subset(*split['test'], 20, 0)\nf(x.to(dev)[:50])",
     "x.to(dev)[:50]"),
    ("test = data.stratified_subset(xs, ys, 20, 0)\nx_few = test[0][:50]", "test[0][:50]"),
    ("k = data.stratified_indices(y, 1, 0)[:8]", "data.stratified_indices(y, 1, 0)[:8]"),
    ("xte, yte = data.load_dataset(d, 'test')\nidx = data.stratified_indices(yte, 5, 0)\n"
     "xs = xte[idx]\nshow(xs[2:10])", "xs[2:10]"),
    ("xte, yte = data.load_dataset(d, 'test')\nshow = (yte != 1).nonzero().flatten()[:8]",
     "(yte != 1).nonzero().flatten()[:8]"),
    ("xtr, ytr = data.load_dataset(d, 'train')\n", None),   # and in the next cell:
]


@pytest.mark.parametrize("code,expected", PLANTED[:-1])
def test_a_planted_slice_is_flagged(code, expected):
    found = slices_in_cells([code])
    assert [f[2] for f in found] == [expected]


def test_the_trail_crosses_cells_and_names_the_cell():
    found = slices_in_cells(["import torch", PLANTED[-1][0], "xb, yb = xtr[:32], ytr[:32]"])
    assert [(c, s) for c, _, s in found] == [(3, "xtr[:32]"), (3, "ytr[:32]")]


@pytest.mark.parametrize("code", [
    "xtr, ytr = data.load_dataset(d, 'train')\nxb = xtr[:, 0]",              # all images
    "xtr, ytr = data.load_dataset(d, 'train')\nprint(model(xtr[:1]).shape)",  # a shape probe
    "xtr, ytr = data.load_dataset(d, 'train')\nprint(xtr.shape[1:])",        # not the images
    "xtr, ytr = data.load_dataset(d, 'train')\nxb = xtr[ytr == 0][:32]",     # one class
    "xtr, ytr = data.load_dataset(d, 'train')\nperm = torch.randperm(len(xtr))\n"
    "xs = xtr[perm]\nxb = xs[:32]",                                          # shuffled
    "x = data.load_dataset(d, 'test')[0]\nx = model(x)\nf(x[:10])",          # rebound
    "head = model[:3]\nz = feats[:, :2]",                                    # not data
])
def test_what_is_not_a_dataset_slice_is_not_flagged(code):
    assert slices_in_cells([code]) == []


# --------------------------------------------------------------------------- the notebooks
# Notebooks allowed to slice for now (stage -> why); empty: every notebook passes.
KNOWN: dict[str, str] = {}
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("stage", [
    pytest.param(s, marks=pytest.mark.xfail(reason=f"slices on this branch: {KNOWN[s]}",
                                            strict=False)) if s in KNOWN else s
    for s in NOTEBOOKS])
def test_no_notebook_slices_a_dataset_array(stage):
    found = slices_in_cells(notebook_cells(stage))
    assert not found, f"{stage}: " + "; ".join(
        f"code cell {c}, line {ln}: {s}" for c, ln, s in found) + \
        " (use data.stratified_indices / stratified_subset)"
