"""The new-paper scaffold creates a stage that passes the contract from its first commit."""
import shutil
import subprocess
import sys

import pytest

from advlab.pipeline import params, scaffold

from ..conftest import ROOT


@pytest.fixture
def repo(tmp_path):
    for d in ("lib", "notebooks", "profiles", "tools"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("*.egg-info",
                                                                              "__pycache__"))
    (tmp_path / "tests" / "papers").mkdir(parents=True)
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / f, tmp_path / f)
    return tmp_path


def test_new_paper_creates_a_consistent_stage(repo):
    made = scaffold.new_paper("42_demo_paper", "Doe & Roe, Venue 2042", root=repo)
    assert repo / "notebooks" / "42_demo_paper.ipynb" in made
    for p in ("lib/advlab/papers/demo_paper.py", "lib/advlab/pipeline/knobs/demo_paper.py",
              "tests/papers/test_demo_paper.py"):
        assert (repo / p).exists(), p
    dvc_yaml = (repo / "dvc.yaml").read_text()
    assert "bash tools/advlab run 42_demo_paper" in dvc_yaml
    assert "lib/advlab/papers/demo_paper.py" in dvc_yaml
    assert 'Stage("42_demo_paper"' in (repo / "lib/advlab/pipeline/stages.py").read_text()
    # the knobs, the sections and the notebook's parameters cell agree (checked in a fresh
    # interpreter that imports the copy's library)
    code = ("from advlab.pipeline import params\n"
            "for prof in params.PROFILES:\n"
            "    p = params.resolve('42_demo_paper', prof)\n"
            "print(sorted(params.knobs('42_demo_paper')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                       env={"PYTHONPATH": str(repo / "lib"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "n_train_per_class" in r.stdout
    assert params.section_of("42_demo_paper") in params.load(repo)


def test_new_paper_refuses_bad_names_and_overwrites(repo):
    with pytest.raises(ValueError, match="NN_slug"):
        scaffold.new_paper("demo", "x", root=repo)
    with pytest.raises(FileExistsError, match="02_awp|awp"):
        scaffold.new_paper("12_awp", "x", root=repo)


@pytest.mark.notebook
def test_scaffolded_notebook_runs_on_smoke_and_records_a_claim(repo):
    if not (ROOT / "data" / "fashion_mnist").exists():
        pytest.skip("data/ missing: run `make data`")
    (repo / "data").symlink_to(ROOT / "data")
    scaffold.new_paper("42_demo_paper", "Doe & Roe, Venue 2042", root=repo)
    r = subprocess.run([sys.executable, "-m", "advlab", "run", "42_demo_paper", "--profile",
                        "smoke", "--no-html", "--quiet"], cwd=repo, capture_output=True,
                       text=True, env={"PYTHONPATH": str(repo / "lib"), "PATH": "/usr/bin:/bin",
                                       "HOME": str(repo)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    claims = (repo / "results" / "42_demo_paper" / "claims.json").read_text()
    assert '"placeholder_above_chance"' in claims
