"""A claim computed only in some configurations (inside an ``if``, a loop over a knob, or a
helper function) must still appear in claims.json in every other configuration: its id is
declared with ``claims.expect(...)`` (shown as "not run" when it was not computed) or reported by
``claims.not_run(...)``.  Checked statically over every notebook: a conditional
``claims.check`` with a literal id needs that id declared; one with a computed id needs the
notebook to declare its claims with ``claims.expect``."""
import ast
import importlib
import json

import pytest

from ..conftest import ROOT

NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _literal_loop(node) -> bool:
    it = node.iter
    return isinstance(it, (ast.Tuple, ast.List)) and all(
        isinstance(e, (ast.Constant, ast.Tuple)) for e in it.elts)


def _claims_call(node, method):
    f = node.func if isinstance(node, ast.Call) else None
    return isinstance(f, ast.Attribute) and f.attr == method and \
        isinstance(f.value, ast.Name) and f.value.id == "claims"


def _imports(tree) -> dict:
    """alias -> module for ``from advlab.papers import x [as y]``."""
    out = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("advlab"):
            for a in n.names:
                out[a.asname or a.name] = f"{n.module}.{a.name}"
    return out


def _declared(tree):
    """(ids declared by claims.expect / claims.not_run, whether some are computed)."""
    ids, dynamic, mods = set(), False, _imports(tree)
    for n in ast.walk(tree):
        if _claims_call(n, "expect"):
            for a in n.args:
                if isinstance(a, ast.Constant):
                    ids.add(a.value)
                elif isinstance(a, ast.Starred) and isinstance(a.value, ast.Attribute) and \
                        isinstance(a.value.value, ast.Name) and a.value.value.id in mods:
                    mod = importlib.import_module(mods[a.value.value.id])
                    ids.update(getattr(mod, a.value.attr))
                else:
                    dynamic = True
        elif _claims_call(n, "not_run") and n.args and isinstance(n.args[0], ast.Constant):
            ids.add(n.args[0].value)
    return ids, dynamic


def uncovered(source: str) -> list[str]:
    """The conditional claims of ``source`` that could silently drop out."""
    tree = ast.parse(source)
    ids, dynamic = _declared(tree)
    expects = any(_claims_call(n, "expect") for n in ast.walk(tree))
    problems = []

    def visit(node, cond):
        if _claims_call(node, "check") and cond and node.args:
            a = node.args[0]
            if isinstance(a, ast.Constant):
                if a.value not in ids:
                    problems.append(f"line {node.lineno}: {a.value!r} (under {cond})")
            elif not (expects and (dynamic or ids)):
                problems.append(f"line {node.lineno}: {ast.unparse(a)} (under {cond})")
        for child in ast.iter_child_nodes(node):
            c = cond
            if isinstance(node, (ast.If, ast.IfExp, ast.While)) and child is not node.test:
                c = c or f"if {ast.unparse(node.test)[:40]}"
            elif isinstance(node, (ast.For, ast.comprehension)) and child is not node.iter \
                    and not (isinstance(node, ast.For) and _literal_loop(node)):
                c = c or f"for ... in {ast.unparse(node.iter)[:40]}"
            elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
                c = c or f"def {getattr(node, 'name', 'lambda')}"
            visit(child, c)

    visit(tree, "")
    return problems


def notebook_source(stage):
    cells = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())["cells"]
    return "\n".join("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                               for ln in "".join(c["source"]).splitlines())
                     for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("code,n", [
    ("claims = Claims('s')\nif ok:\n    claims.check('a', 's', 'p', 1, '>', 0)", 1),
    ("claims = Claims('s')\nfor m in models:\n    claims.check(f'a_{m}', 's', 'p', 1, '>', 0)", 1),
    ("claims = Claims('s')\ndef f(m):\n    claims.check(f'a_{m}', 's', 'p', 1, '>', 0)", 1),
    ("claims = Claims('s')\nclaims.expect('a')\nif ok:\n    claims.check('a', 's', 'p', 1, '>', 0)",
     0),
    ("claims = Claims('s')\nif ok:\n    claims.check('a', 's', 'p', 1, '>', 0)\nelse:\n"
     "    claims.not_run('a', 's', reason='r')", 0),
    ("claims = Claims('s')\nclaims.expect('b')\nif ok:\n    claims.check('a', 's', 'p', 1, '>', 0)",
     1),
    ("claims = Claims('s')\nfor nn in ('l2', 'linf'):\n    claims.check(f'b_{nn}', 's', 'p', 1, '>', 0)",
     0),
    ("claims = Claims('s')\nclaims.check('a', 's', 'p', 1 if ok else 0, '>', 0)", 0),
])
def test_the_check_finds_claims_that_can_drop_out(code, n):
    assert len(uncovered(code)) == n, uncovered(code)


# Notebooks of other sessions that trip the check on this branch (the lead removes an entry
# once its fix is merged): stage -> the claims.
KNOWN: dict[str, str] = {}


@pytest.mark.parametrize("stage", [
    pytest.param(s, marks=pytest.mark.xfail(reason=KNOWN[s], strict=False)) if s in KNOWN else s
    for s in NOTEBOOKS])
def test_no_claim_can_silently_drop_out(stage):
    problems = uncovered(notebook_source(stage))
    assert not problems, f"{stage}: declare these with claims.expect or claims.not_run: " + \
        "; ".join(problems)
