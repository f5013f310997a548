"""The pipeline end to end on the smoke profile, in a temporary clone of the repository, driven
the way the README drives it:

- every stage runs through `make repro`'s runner (`python -m advlab repro --jobs 2`: stale
  stages two at a time, committed to DVC) with a PATH that holds no project interpreter (stage
  commands run with the shell's PATH; `tools/advlab` must find the project's);
- a second, plain `dvc repro` runs nothing but the data check (the parallel runner left DVC's
  records exactly as `dvc repro` would), and one knob invalidates only its stage;
- `dvc exp run -S <section>.<knob>=...` works for every section (Hydra's grammar rejects keys
  starting with a digit), and a queued experiment runs in a copy under .dvc/tmp/exps/, which
  needs data/ in DVC's cache;
- corrupt data stops `dvc repro` before any stage runs, naming the file, and data.dvc is
  never rewritten;
- a seed sweep runs through the queue (`python -m advlab seeds`) and SEEDS.md shows each seed;
- metrics are versioned by git: `dvc metrics diff HEAD` and `dvc exp show` compare runs.
- with `common.dataset: mnist5k` (a second clone), every stage that supports it runs and
  reports the same claims, and the others stop in setup saying why.
Also: a failing notebook names its cell."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from advlab.core.claims import KINDS, VERDICTS
from advlab.pipeline import params, stages
from advlab.pipeline import run as runner

from .conftest import ROOT

pytestmark = pytest.mark.pipeline
STAGES = [s.name for s in stages.STAGES]
VENV = Path(sys.executable).parent.parent
# No project interpreter on PATH: what `.venv/bin/dvc repro` sees without an activated env.
BARE = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
for k in ("ADVLAB_ROOT", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "ADVLAB_PYTHON"):
    BARE.pop(k, None)


def sh(*args, cwd, check=True, env=None):
    r = subprocess.run(args, cwd=cwd, env=env or BARE, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-4000:]}\n"
                             f"{r.stderr[-4000:]}")
    return r


def dvc(repo, *args, check=True, activated=False):
    """`.venv/bin/dvc ARGS` in ``repo``; ``activated``: as after `source .venv/bin/activate`."""
    env = BARE
    if activated:
        env = {**BARE, "PATH": f"{repo / '.venv' / 'bin'}:{BARE['PATH']}",
               "VIRTUAL_ENV": str(repo / ".venv")}
    return sh(str(repo / ".venv" / "bin" / "dvc"), *args, cwd=repo, check=check, env=env)


def git(repo, *args):
    return sh("git", "-c", "user.name=t", "-c", "user.email=t@t", *args, cwd=repo)


def set_param(repo, file, section, key, value):
    path = repo / file
    d = yaml.safe_load(path.read_text())
    d[section][key] = value
    path.write_text(yaml.safe_dump(d, sort_keys=False))


def clone(dest: Path, **common) -> Path:
    """A clone of the working tree (tracked + new files) in ``dest`` on the smoke profile (and
    the ``common`` values given), set up as the README's setup command leaves it (data/ built
    and cached, a .venv: here a link to this one), committed."""
    if not (ROOT / "data" / "fashion_mnist").exists():
        pytest.skip("data/ missing: run `make data`")
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z",
               cwd=ROOT).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    shutil.copytree(ROOT / "data", dest / "data")
    (dest / ".venv").symlink_to(VENV)
    for k, v in {"profile": "smoke", **common}.items():
        set_param(dest, "params.yaml", "common", k, v)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "copy")
    sh(str(dest / ".venv" / "bin" / "python"), "-m", "advlab", "data", "cache", cwd=dest)
    return dest


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory):
    """A clone (see ``clone``) after one run of `make repro`'s runner, with the run committed."""
    dest = clone(tmp_path_factory.mktemp("workbook"))
    first = sh(str(dest / ".venv" / "bin" / "python"), "-m", "advlab", "repro", "--jobs", "2",
               cwd=dest)
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "smoke run")
    return dest, first.stdout


@pytest.mark.notebook
@pytest.mark.parametrize("stage", STAGES)
def test_every_notebook_runs_on_smoke(smoke_repo, stage):
    repo, _ = smoke_repo
    out, res = repo / "outputs" / stage, repo / "results" / stage
    assert (out / f"{stage}.ipynb").exists() and (out / f"{stage}.html").exists()
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics and all(isinstance(v, (int, float)) for v in metrics.values())
    head = [k for k in metrics if not k.startswith("claim.")]  # one per claim, plus ...
    assert len(head) <= 20, f"{stage}: {len(head)} headline metrics; keep the rest in " \
        "outputs/<stage>/details.json"
    assert (out / "details.json").exists()
    if stage != "99_report":
        claims = json.loads((res / "claims.json").read_text())
        assert claims["n"] >= 1 and claims["stage"] == stage
        for c in claims["claims"]:
            assert isinstance(c["holds"], bool) and isinstance(c["measured"], float)
            assert c["verdict"] in VERDICTS and c["kind"] in KINDS
            assert c["holds"] == (c["verdict"] == "holds")
            if c["interval"] is not None and c["verdict"] != "not run":
                lo, hi = c["interval"]
                assert lo <= c["measured"] + 1e-9 and c["measured"] <= hi + 1e-9
            assert f"claim.{c['id']}" in metrics
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["params"]["profile"] == "smoke"
    executed = json.loads((out / f"{stage}.ipynb").read_text())
    echoed = [i for i, c in enumerate(executed["cells"]) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "execute_result"
              and set(o.get("data", {})) == {"text/plain"}]
    assert not echoed, f"{stage}: code cells {echoed} end in a value shown as bare text (a " \
        "string said twice, a path, a number): end them in a statement or notebook.say"


def test_stages_ran_without_a_project_interpreter_on_path(smoke_repo):
    repo, first = smoke_repo
    assert sh("sh", "-c", "command -v python || true", cwd=repo).stdout.strip() != \
        str(repo / ".venv" / "bin" / "python")
    for stage in STAGES:
        assert f"  {stage}: started" in first and f"  {stage}: done in" in first, first


def test_the_default_run_keeps_every_stage_at_its_thread_count(smoke_repo):
    """No thread grant unless asked (--grant-idle-threads): a stage's numbers depend on its
    thread count, so `make repro` must not change it at a moment the schedule decides."""
    repo, first = smoke_repo
    assert "threads (nothing else can start)" not in first, first
    assert not list((repo / "logs").glob("*.threads"))


def test_report_collects_every_stage_and_writes_results_md(smoke_repo):
    repo, _ = smoke_repo
    md = (repo / "outputs" / "99_report" / "scorecard.md").read_text()
    results = (repo / "RESULTS.md").read_text()
    assert results.startswith("<!-- GENERATED")
    for stage in STAGES:
        if stage != "99_report":
            assert f"## {stage}:" in md and f"## {stage}:" in results
            assert f"| `{stage}` |" in results  # its wall time


def test_second_repro_only_checks_the_data(smoke_repo):
    repo, _ = smoke_repo
    out = dvc(repo, "repro").stdout
    ran = [ln for ln in out.splitlines() if ln.startswith("Running stage")]
    assert ran == ["Running stage 'data':"], out
    assert sh("git", "status", "--porcelain", cwd=repo).stdout == ""


def changed_stages(repo):
    return set(json.loads(dvc(repo, "status", "--json").stdout)) - {"data"}


@pytest.mark.parametrize("file", ["params.yaml", "profiles/smoke.yaml"])
def test_a_knob_invalidates_only_its_stage(smoke_repo, file):
    repo, _ = smoke_repo
    original = (repo / file).read_text()
    try:
        set_param(repo, file, "baselines", "eval_steps", 4)
        assert changed_stages(repo) == {"00_baselines"}
        set_param(repo, file, "report", "stages", ["00_baselines"])
        assert changed_stages(repo) == {"00_baselines", "99_report"}
    finally:
        (repo / file).write_text(original)
    assert changed_stages(repo) == set()


def test_every_section_is_addressable_with_dvc_exp_run_set_param(smoke_repo):
    """`dvc exp run -S section.knob=value` parses and applies for every section (Hydra's
    grammar rejected `00_baselines.eps`).  Values unchanged and `--temp`: a real experiment in
    a copy under .dvc/tmp/exps/, where only the data check runs, on data/ checked out from
    DVC's cache."""
    repo, _ = smoke_repo
    base = params.load(repo)
    sets = []
    for section in ["common"] + [s.slug for s in stages.STAGES]:
        key = sorted(base[section])[0]
        sets += ["-S", f"{section}.{key}={json.dumps(base[section][key])}"]
    r = dvc(repo, "exp", "run", "--temp", "-n", "every-section", *sets, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Running stage 'data'" in r.stdout and "Running stage '00_baselines'" not in r.stdout
    assert sh("git", "status", "--porcelain", "params.yaml", cwd=repo).stdout == ""


def test_queued_experiment_runs_in_a_copy_and_shows_its_metrics(smoke_repo):
    repo, _ = smoke_repo
    dvc(repo, "exp", "run", "--queue", "-n", "only-baselines", "-S",
        "report.stages=[00_baselines]")
    # DVC's queue worker is started as `dvc` from PATH: the README activates the env first.
    dvc(repo, "queue", "start", activated=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(repo, "queue", "status", activated=True).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Success" in status, status + dvc(repo, "queue", "logs", "only-baselines",
                                           check=False, activated=True).stdout[-3000:]
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    exps = [e for r in shown for e in (r.get("experiments") or [])]
    exp = next(e for e in exps if e["name"] == "only-baselines")
    metrics = exp["revs"][0]["data"]["metrics"]["results/99_report/metrics.json"]["data"]
    assert metrics["stages"] == 1   # the report of the experiment saw only 00_baselines


def test_seed_sweep_runs_through_the_queue_and_reports_every_seed(smoke_repo):
    repo, _ = smoke_repo
    sh(str(repo / ".venv" / "bin" / "python"), "-m", "advlab", "seeds", "1", "--stages",
       "01_regional", cwd=repo)
    try:
        md = (repo / "SEEDS.md").read_text()
        assert "| seed 0 | seed 1 |" in md and "## 01_regional" in md
        rows = [ln for ln in md.splitlines() if ln.startswith("| ") and " of 2 |" in ln]
        assert rows, md  # every claim of the stage, seen on both seeds
    finally:  # SEEDS.md is tracked (the committed sweep): put the committed one back
        sh("git", "checkout", "--", "SEEDS.md", cwd=repo)


def test_corrupt_data_stops_repro_before_any_stage_and_keeps_data_dvc(smoke_repo):
    repo, _ = smoke_repo
    victim = repo / "data" / "mnist5k" / "test_labels.npy"
    original = victim.read_bytes()
    dvc_file = (repo / "data.dvc").read_bytes()
    try:
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        set_param(repo, "params.yaml", "baselines", "eval_steps", 4)  # a stage that would run
        r = dvc(repo, "repro", check=False)
        assert r.returncode != 0
        assert "mnist5k/test_labels.npy is corrupt" in r.stderr + r.stdout
        assert "make data" in r.stderr + r.stdout
        assert "Running stage '00_baselines'" not in r.stdout
        assert (repo / "data.dvc").read_bytes() == dvc_file
    finally:
        victim.write_bytes(original)
        sh("git", "checkout", "params.yaml", cwd=repo)
    dvc(repo, "repro")  # the stamps come back; nothing else changed
    assert sh("git", "status", "--porcelain", cwd=repo).stdout == ""


def test_metrics_are_versioned_and_plots_render(smoke_repo):
    repo, _ = smoke_repo
    r = dvc(repo, "metrics", "diff", "HEAD", "--json")
    assert "failed to load" not in r.stderr
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert "pgd_at_aa_acc" in files["results/00_baselines/metrics.json"]["data"]
    assert sh("git", "ls-files", "results/00_baselines/metrics.json", cwd=repo).stdout.strip()
    dvc(repo, "plots", "show", "--json")


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
    r = sh(sys.executable, "-m", "advlab", "run", "broken", "--quiet", cwd=tmp_path, check=False,
           env={**BARE, "PATH": f"{Path(sys.executable).parent}:{BARE['PATH']}"})
    assert r.returncode == 1 and "failed in cell [4]" in r.stderr


def test_progress_bars_are_stripped_from_the_executed_notebook(tmp_path):
    from nbformat.v4 import new_output

    cell = new_code_cell("x")
    cell.outputs = [new_output("stream", name="stderr", text=(
        "train:   0%|          | 0/4 [00:00<?, ?it/s]\rtrain:  50%|#####     | 2/4 [00:01<00:01,"
        " 1.9it/s]\rtrain: 100%|##########| 4/4 [00:02<00:00, 2.0it/s]\n")),
        new_output("stream", name="stdout", text="accuracy 0.91\n50% of 4 | kept\n")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=[cell]), path)
    assert runner.strip_progress(path) == 3
    outs = nbformat.read(path, as_version=4).cells[0].outputs
    assert len(outs) == 1 and outs[0]["text"] == "accuracy 0.91\n50% of 4 | kept\n"


# --------------------------------------------------------------------------- second dataset
MNIST5K = [s.name for s in stages.STAGES if "mnist5k" in s.datasets and s.name != stages.REPORT]


@pytest.mark.notebook
def test_every_stage_runs_on_mnist5k_or_refuses_it_up_front(smoke_repo, tmp_path):
    """`common.dataset: mnist5k` on the smoke profile: every stage that supports it runs
    through `make repro`'s runner (its upstream stages retrained on mnist5k) and reports every
    claim it reports on Fashion-MNIST (the smoke run of the same code); a stage that does not
    support it stops in setup, saying why."""
    fashion, _ = smoke_repo
    repo = clone(tmp_path / "repo", dataset="mnist5k")
    py = str(repo / ".venv" / "bin" / "python")
    r = sh(py, "-m", "advlab", "repro", "--jobs", "2", *MNIST5K, cwd=repo, check=False)
    logs = {n: (repo / "logs" / f"{n}.log") for n in MNIST5K}
    failed = {n: f.read_text()[-1500:] for n, f in logs.items()
              if not (repo / "outputs" / n / "run.json").exists() and f.exists()}
    assert r.returncode == 0 and not failed, f"{r.stderr[-3000:]}\n{failed}"
    for n in MNIST5K:
        p = json.loads((repo / "outputs" / n / "run.json").read_text())["params"]
        assert p["profile"] == "smoke"
        assert "mnist5k" in (p["dataset"], p.get("mnist_dataset")), n
        ours = {c["id"] for c in json.loads((repo / "results" / n / "claims.json").read_text())
                ["claims"]}
        on_fashion = {c["id"] for c in json.loads((fashion / "results" / n / "claims.json")
                                                  .read_text())["claims"]}
        assert ours == on_fashion, f"{n}: claims differ on mnist5k: {ours ^ on_fashion}"
    for s in stages.STAGES:
        if s.name not in MNIST5K and s.name != stages.REPORT:
            r = sh("bash", "tools/advlab", "run", s.name, "--no-html", "--quiet", "--out-dir",
                   str(tmp_path / s.name), cwd=repo, check=False)
            assert r.returncode == 1 and "does not support 'mnist5k'" in r.stderr, s.name
            assert s.why and s.why[:30] in " ".join(r.stderr.split()), s.name
