"""The pipeline end to end on the smoke profile, in a temporary copy of the repository:
every notebook runs through the runner, a second `dvc repro` is a no-op, and changing one knob
invalidates exactly the stage that reads it.  Also: a failing notebook names its cell."""
import json
import os
import shutil
import subprocess
import sys

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from advlab import run as runner

from .conftest import ROOT

pytestmark = pytest.mark.pipeline
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
ENV = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
ENV.pop("ADVLAB_ROOT", None)


def sh(*args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-4000:]}")
    return r


def dvc(*args, cwd, check=True):
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, check=check)


def set_param(repo, file, section, key, value):
    path = repo / file
    d = yaml.safe_load(path.read_text())
    d[section][key] = value
    path.write_text(yaml.safe_dump(d, sort_keys=False))


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory):
    """A copy of the working tree (tracked + new files) and data/, on the smoke profile, after
    one `dvc repro`."""
    if not (ROOT / "data" / "fashion_mnist").exists():
        pytest.skip("data/ missing: run `make data`")
    dest = tmp_path_factory.mktemp("workbook")
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z",
               cwd=ROOT).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    shutil.copytree(ROOT / "data", dest / "data")
    set_param(dest, "params.yaml", "common", "profile", "smoke")
    sh("git", "init", "-q", cwd=dest)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "x",
       "--allow-empty", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=dest)
    first = dvc("repro", cwd=dest)
    return dest, first.stdout


@pytest.mark.notebook
@pytest.mark.parametrize("stage", STAGES)
def test_every_notebook_runs_on_smoke(smoke_repo, stage):
    repo, _ = smoke_repo
    out = repo / "outputs" / stage
    assert (out / f"{stage}.ipynb").exists() and (out / f"{stage}.html").exists()
    claims = json.loads((out / "claims.json").read_text()) if stage != "99_report" else None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics and all(isinstance(v, (int, float)) for v in metrics.values())
    if claims is not None:
        assert claims["n"] >= 1 and claims["stage"] == stage
        for c in claims["claims"]:
            assert isinstance(c["holds"], bool) and isinstance(c["measured"], float)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["params"]["profile"] == "smoke"


def test_report_collects_every_stage(smoke_repo):
    repo, _ = smoke_repo
    md = (repo / "outputs" / "99_report" / "scorecard.md").read_text()
    for stage in STAGES:
        if stage != "99_report":
            assert f"## {stage}:" in md


def test_second_repro_is_a_noop(smoke_repo):
    repo, _ = smoke_repo
    out = dvc("repro", cwd=repo).stdout
    assert "Running stage" not in out, out
    assert "Data and pipelines are up to date" in dvc("status", cwd=repo).stdout


def changed_stages(repo):
    return set(json.loads(dvc("status", "--json", cwd=repo).stdout))


@pytest.mark.parametrize("file", ["params.yaml", "profiles/smoke.yaml"])
def test_a_knob_invalidates_only_its_stage(smoke_repo, file):
    repo, _ = smoke_repo
    original = (repo / file).read_text()
    try:
        set_param(repo, file, "00_baselines", "eval_steps", 4)
        assert changed_stages(repo) == {"00_baselines"}
        set_param(repo, file, "99_report", "stages", ["00_baselines"])
        assert changed_stages(repo) == {"00_baselines", "99_report"}
    finally:
        (repo / file).write_text(original)
    assert changed_stages(repo) == set()


def test_metrics_and_plots_show(smoke_repo):
    repo, _ = smoke_repo
    shown = dvc("metrics", "show", "--json", cwd=repo).stdout
    assert "pgd_at_aa_acc" in shown
    dvc("plots", "show", "--json", cwd=repo)


def test_failing_notebook_names_its_cell(tmp_path):
    (tmp_path / "lib" / "advlab").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params.yaml").write_text(
        "common:\n  profile: default\n  seed: 0\nbroken:\n  k: 1\n")
    cells = [new_code_cell("k = 1", metadata={"tags": ["parameters"]}),
             new_code_cell("x = k + 1"), new_code_cell("1 / 0")]
    nbformat.write(new_notebook(cells=cells), tmp_path / "notebooks" / "broken.ipynb")
    with pytest.raises(runner.StageFailed, match="ZeroDivisionError") as e:
        runner.execute("broken", root=tmp_path, log_output=False)
    # papermill inserts an injected-parameters cell, so "1 / 0" is the 4th cell executed
    assert e.value.exec_count == 4 and "cell [4]" in str(e.value) and "'1 / 0'" in str(e.value)
    r = sh(sys.executable, "-m", "advlab.run", "broken", "--quiet", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "failed in cell [4]" in r.stderr
