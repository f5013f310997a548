"""Notebook and pipeline hygiene: notebooks are committed without outputs, have one
`parameters` cell equal to params.yaml, and every stage declares what it depends on."""
import ast
import re

import nbformat
import pytest
import yaml

from advlab import params

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STAGES = [p.stem for p in NOTEBOOKS]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STAGES)
def test_no_outputs_committed(path):
    nb = nbformat.read(path, as_version=4)
    for c in code_cells(nb):
        assert c.outputs == [] and c.execution_count is None, f"{path.name}: strip outputs " \
            "(make strip)"
    assert "papermill" not in nb.metadata
    assert all("papermill" not in c.metadata for c in nb.cells)


def parameters_cell(path):
    cells = [c for c in code_cells(nbformat.read(path, as_version=4))
             if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds plain assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STAGES)
def test_parameters_equal_params_yaml(path):
    stage = path.stem
    base = params.load(ROOT)
    assert stage in base, f"params.yaml lacks a section {stage!r}"
    expected = {**base["common"], **(base[stage] or {}), "out_dir": None}
    assert parameters_cell(path) == expected


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_is_in_the_pipeline_and_profiles(stage):
    assert stage in DVC, f"dvc.yaml lacks stage {stage}"
    assert DVC[stage]["cmd"] == f"python -m advlab.run {stage}"
    for prof in ("smoke", "paper"):
        overlay = yaml.safe_load((ROOT / "profiles" / f"{prof}.yaml").read_text())
        assert stage in overlay, f"profiles/{prof}.yaml lacks a section {stage!r}"
    tracked = DVC[stage]["params"]
    assert "common" in tracked and stage in tracked
    for prof in ("smoke", "paper"):
        entry = next(p for p in tracked if isinstance(p, dict) and f"profiles/{prof}.yaml" in p)
        assert set(entry[f"profiles/{prof}.yaml"]) == {"common", stage}


def advlab_imports(source: str, package_relative: bool) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if package_relative and node.level == 1:
                if node.module:
                    mods.add(node.module.split(".")[0])
                else:
                    mods.update(a.name for a in node.names)
            elif node.module == "advlab":
                mods.update(a.name for a in node.names)
            elif node.module and node.module.startswith("advlab."):
                mods.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            mods.update(a.name.split(".")[1] for a in node.names if a.name.startswith("advlab."))
    return mods


def closure(mods: set[str]) -> set[str]:
    todo, seen = list(mods), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        src = (ROOT / "lib" / "advlab" / f"{m}.py").read_text()
        todo.extend(advlab_imports(src, True) - seen)
    return seen


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STAGES)
def test_stage_deps_cover_every_imported_module(path):
    nb = nbformat.read(path, as_version=4)
    src = "\n".join(re.sub(r"^[%!].*$", "", c.source, flags=re.M) for c in code_cells(nb))
    needed = closure(advlab_imports(src, False) | {"run"})
    deps = set(DVC[path.stem]["deps"])
    missing = sorted(f"lib/advlab/{m}.py" for m in needed if f"lib/advlab/{m}.py" not in deps)
    assert not missing, f"dvc.yaml stage {path.stem} lacks deps {missing}"
    assert f"notebooks/{path.name}" in deps


def test_report_depends_on_every_stage_claims():
    deps = set(DVC["99_report"]["deps"])
    for stage in STAGES:
        if stage != "99_report":
            assert f"outputs/{stage}/claims.json" in deps
