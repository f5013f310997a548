"""The contract every stage keeps, parametrized over the stage registry
(``advlab.pipeline.stages.STAGES``), so paper ten gets the same checks as paper one.  The smoke
run of each notebook (claims produced) is in test_pipeline.py, over the same registry."""
import importlib
import json

import pytest
import yaml

from advlab.pipeline import params, schema, stages

from .conftest import ROOT

ALL = stages.STAGES
PAPERS = stages.papers()


def ids(s):
    return s.name


@pytest.mark.parametrize("stage", ALL, ids=ids)
def test_notebook_and_sections_exist(stage):
    assert (ROOT / "notebooks" / f"{stage.name}.ipynb").exists()
    assert stage.slug in params.load(ROOT), f"params.yaml lacks section {stage.slug!r}"
    for prof in ("smoke", "paper"):
        overlay = yaml.safe_load((ROOT / "profiles" / f"{prof}.yaml").read_text())
        assert stage.slug in overlay, f"profiles/{prof}.yaml lacks section {stage.slug!r}"


@pytest.mark.parametrize("stage", ALL, ids=ids)
def test_knob_declarations_match_params_yaml_exactly(stage):
    """Every knob of the section is declared (type, range or choices) and every declared knob
    has a value: the schema is complete, in both directions."""
    declared = params.knobs(stage.name)
    assert declared is not None, f"lib/advlab/pipeline/knobs/{stage.slug}.py is missing"
    base = params.load(ROOT)
    assert set(declared) == set(base["common"]) | set(base[stage.slug] or {})
    for prof in params.PROFILES:
        params.resolve(stage.name, prof, ROOT)  # every profile's values are allowed


@pytest.mark.parametrize("stage", ALL, ids=ids)
def test_dvc_stage_runs_the_notebook_with_its_sections(stage):
    st = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage.name]
    assert st["cmd"] == f"bash tools/advlab run {stage.name}"
    assert f"notebooks/{stage.name}.ipynb" in st["deps"]
    assert st["params"][:2] == ["common", stage.slug]
    assert [list(p.values())[0] for p in st["params"][2:]] == [["common", stage.slug]] * 2
    assert list(st["metrics"][0]) == [f"results/{stage.name}/metrics.json"]
    for d in stage.datasets:
        assert f"results/data/{d}.md5" in st["deps"]


@pytest.mark.parametrize("stage", PAPERS, ids=ids)
def test_paper_module_docstring_names_paper_official_code_and_deviations(stage):
    mod = importlib.import_module(stage.module)
    doc = (mod.__doc__ or "").lower()
    assert len(doc) > 200, f"{stage.module} needs a module docstring"
    assert "official" in doc, f"{stage.module}'s docstring should say what the official code does"
    assert any(w in doc for w in ("deviation", "differs", "unlike", "instead of", "we use",
                                  "not stated", "unverified", "our ")), \
        f"{stage.module}'s docstring should name its deviations from the paper"


@pytest.mark.parametrize("stage", PAPERS, ids=ids)
def test_paper_has_its_test_file(stage):
    assert (ROOT / "tests" / "papers" / f"test_{stage.slug}.py").exists()


@pytest.mark.parametrize("stage", PAPERS, ids=ids)
def test_paper_notebook_shows_its_method_and_saves_claims(stage):
    src = stages.notebook_source(ROOT / "notebooks" / f"{stage.name}.ipynb")
    assert "notebook.show_source(" in src or "notebook.check_matches(" in src, \
        "build the method where it is taught (checked against the library), or show its code"
    assert f'notebook.setup("{stage.name}"' in src
    assert "run.save_claims(" in src and "run.save_metrics(" in src


def test_knob_vocabulary_errors_name_what_is_allowed():
    knobs = {"eps": schema.Float(0, 1), "n": schema.Int(1), "arch": schema.Choice(schema.MODEL),
             "gammas": schema.List(schema.Float(0, 1), min_len=1), "flag": schema.Bool()}
    ok = {"eps": 0.1, "n": 3, "arch": "small_cnn", "gammas": [0.01], "flag": False}
    assert schema.check(dict(ok), knobs) == ok
    for key, bad, match in [("eps", 1.5, r"in \[0, 1\]"), ("n", 0.5, "integer"),
                            ("arch", "resnet9000", "small_cnn"), ("gammas", [], "at least 1"),
                            ("gammas", [-1.0], "item 0"), ("flag", "yes", "true or false"),
                            ("n", True, "integer")]:
        with pytest.raises(schema.ParamsError, match=match) as e:
            schema.check({**ok, key: bad}, knobs, where="sec.")
        assert str(e.value).startswith(f"sec.{key}:")
    with pytest.raises(schema.ParamsError, match="unknown parameter"):
        schema.check({**ok, "epz": 1}, knobs)
    with pytest.raises(schema.ParamsError, match="missing"):
        schema.check({k: v for k, v in ok.items() if k != "n"}, knobs)


def test_mad_method_choices_follow_the_library():
    from advlab.papers import mad
    from advlab.pipeline.knobs import mad as mad_knobs

    assert set(mad_knobs.METHODS) == {*mad.CRITERIA, "mad_largest"}


def test_claims_json_of_the_committed_results_are_well_formed():
    """results/ holds the last run's verdicts, committed by whoever ran it."""
    for path in sorted((ROOT / "results").glob("*/claims.json")):
        blob = json.loads(path.read_text())
        assert blob["stage"] == path.parent.name and blob["n"] == len(blob["claims"])


def test_every_widget_is_built_by_a_test():
    """A widget a notebook shows (an ``*_explorer`` or ``*_picker`` in a paper module or in
    core/widgets.py) is built headless and updated by some test."""
    import re

    names = set()
    for f in [*(ROOT / "lib" / "advlab" / "papers").glob("*.py"),
              ROOT / "lib" / "advlab" / "core" / "widgets.py"]:
        names |= set(re.findall(r"^def (\w+_(?:explorer|picker))\(", f.read_text(), re.M))
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py")
                      if p.name != "test_contract.py")
    assert names, "no widgets found: the pattern is out of date"
    untested = sorted(n for n in names if n not in tests)
    assert not untested, f"widgets no test builds: {untested}"
