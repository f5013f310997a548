"""Notebook and pipeline hygiene: notebooks are committed without outputs, have one
`parameters` cell equal to params.yaml, dvc.yaml is the rendering of the stage registry, and
the library's layers keep their import rules."""
import ast
import subprocess
import sys

import nbformat
import pytest
import yaml

from advlab.pipeline import params, stages

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LIB = ROOT / "lib" / "advlab"


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_parameters_equal_params_yaml(path):
    section = params.section_of(path.stem)
    base = params.load(ROOT)
    assert section in base, f"params.yaml lacks a section {section!r}"
    expected = {**base["common"], **(base[section] or {}), "out_dir": None}
    assert parameters_cell(path) == expected


def test_every_notebook_is_a_registered_stage():
    assert NAMES == [s.name for s in stages.STAGES] == params.stages(ROOT)


def test_dvc_yaml_is_the_rendering_of_the_registry():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_dvc.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("stage", NAMES)
def test_stage_deps_cover_every_imported_module(stage):
    """Independent of the renderer: every advlab module a notebook imports (directly or
    through the package) is a DVC dependency of its stage."""
    nb_src = stages.notebook_source(ROOT / "notebooks" / f"{stage}.ipynb")
    mods = {m for m in stages.advlab_imports(nb_src)}
    assert mods, f"{stage} imports nothing from advlab"
    needed = {str(p) for p in stages.module_closure(mods, ROOT)}
    missing = sorted(needed - set(DVC[stage]["deps"]))
    assert not missing, f"dvc.yaml stage {stage} lacks deps {missing}"


def test_stages_read_data_only_through_the_checked_stamps():
    """No stage depends on data/ directly: DVC would then 'verify' data.dvc itself and rewrite
    it from corrupt data.  The `data` stage checks data/ and writes the stamps."""
    for name, st in DVC.items():
        assert not any(d == "data" or d.startswith("data/") for d in st.get("deps", [])), name
    assert DVC["data"]["always_changed"] is True


def test_report_depends_on_every_stage_result():
    deps = set(DVC["99_report"]["deps"])
    for s in stages.STAGES:
        if s.name != "99_report":
            assert f"results/{s.name}/claims.json" in deps


def test_results_are_tracked_by_git_not_ignored():
    r = subprocess.run(["git", "check-ignore", "-q", "results/00_baselines/metrics.json"],
                       cwd=ROOT)
    assert r.returncode == 1, "results/ must not be git-ignored: it holds the versioned metrics"


# --------------------------------------------------------------------------- layers
def _modules(layer):
    return sorted(p for p in (LIB / layer).rglob("*.py") if p.name != "__init__.py")


def _imports(path):
    dotted = ".".join(path.relative_to(ROOT / "lib").with_suffix("").parts)
    return stages.advlab_imports(path.read_text(), dotted)


@pytest.mark.parametrize("path", _modules("papers"), ids=lambda p: p.stem)
def test_papers_never_import_papers_or_the_pipeline(path):
    bad = {m for m in _imports(path)
           if m.startswith("advlab.papers.") or m.startswith("advlab.pipeline")}
    assert not bad, f"{path.name} imports {sorted(bad)}: move shared helpers to advlab.core"


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.stem)
def test_core_imports_neither_papers_nor_pipeline(path):
    bad = {m for m in _imports(path) if m.split(".")[1] in ("papers", "pipeline")}
    assert not bad, f"core/{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("pipeline"), ids=lambda p: p.stem)
def test_pipeline_imports_core_only_inside_functions(path):
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    dotted = ".".join(path.relative_to(ROOT / "lib").with_suffix("").parts)
    for node in top:
        mods = stages.advlab_imports(ast.unparse(node), dotted)
        assert not any(".core" in m or ".papers" in m for m in mods), \
            f"pipeline/{path.name}: top-level `{ast.unparse(node)}`"


@pytest.mark.parametrize("path", sorted(LIB.rglob("__init__.py")), ids=str)
def test_package_inits_hold_only_docstrings(path):
    """__init__ files are no DVC dependency, so they must hold no code."""
    for node in ast.parse(path.read_text()).body:
        ok = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) or \
            isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        assert ok, f"{path}: only a docstring and constants belong here"


def test_package_map_and_readme_name_every_module():
    doc = (LIB / "__init__.py").read_text()
    readme = (ROOT / "README.md").read_text()
    for layer in ("core", "pipeline", "papers"):
        for p in _modules(layer):
            if p.parent.name == "knobs":
                continue
            assert p.stem in doc, f"advlab/__init__.py's map lacks {layer}/{p.stem}"
            assert f"`{p.stem}`" in readme, \
                f"README's layout lacks {layer}/{p.name}"


def _pipquiet():
    """The Makefile's PIPQUIET filter, as the shell command make pastes after `pip ... |`."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("PIPQUIET :="):
            return line.split(":=", 1)[1].strip()
    raise AssertionError("Makefile defines no PIPQUIET")


@pytest.mark.parametrize("producer, rc, shown", [
    ("false", 1, ""),  # pip failing (no space left on device) must stop make
    ('echo "WARNING: Location /x is ignored"', 0, ""),  # the index warning is hidden
    ('echo "WARNING: Location /x is ignored"; echo kept', 0, "kept\n"),
])
def test_makefile_pip_filter_keeps_pips_exit_status(producer, rc, shown):
    out = subprocess.run(["bash", "-eo", "pipefail", "-c", f"({producer}) 2>&1 | {_pipquiet()}"],
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (rc, shown)
