"""Run the pipeline's stale stages two (or N) at a time: ``python -m advlab repro --jobs 2``.

``dvc repro`` runs one stage after another, so on a 2-core laptop one core idles through most
of the pipeline.  DVC documents the way out ("Parallel stage execution" in ``dvc repro``'s
reference): run independent branches of the DAG as separate processes, then let ``dvc repro``
find everything up to date.  This module does exactly that, without two DVC processes ever
touching the repository at once (DVC's repository lock is not built for that:
treeverse/dvc#5795):

1. ``dvc repro data`` checks ``data/`` (always, like ``dvc repro``);
2. a stage becomes *ready* when every stage it reads from (the registry's ``reads``; the report
   reads them all) is finished; a ready stage that ``dvc status`` calls up to date is skipped;
3. a stale ready stage runs its own command (``tools/advlab run STAGE``) in a worker process,
   after its outputs are removed as ``dvc repro`` would; the longest remaining chain of work
   starts first;
4. when it succeeds, ``dvc commit`` records it in ``dvc.lock`` and the cache (one DVC call at a
   time, from this process); a failure stops what depends on it, the rest carries on;
5. a final ``dvc repro`` must find nothing to do (it would run anything left over).

So the result is the one ``dvc repro`` gives: the same ``dvc.lock``, a no-op second run, only
changed stages re-run.  Each worker's notebook gets ``ADVLAB_THREADS`` threads (1 by default
with two jobs) and its log goes to ``logs/STAGE.log``.

``--grant-idle-threads`` (off by default): when a core would idle because every stage left
waits for the ones running (the tail of the pipeline), the running stages are granted its
threads through ``logs/STAGE.threads`` (read by ``core.progress.regrant`` as their progress
bars advance), and give them back when a new stage starts.  It is off by default because a
stage's numbers depend on its thread count (the order of floating-point sums in training) and
the grant changes that count at a moment set by the schedule: with it, two runs of the same
commit gave 08_acav different models (``tcav_recall_unstable`` 0.193 vs 0.162).  Without it,
every stage runs at a fixed thread count and ``make repro`` gives the same numbers every time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..paths import repo_root
from . import stages as stages_mod

# Rough default-profile minutes of each stage on one core (for the order only; the log of a
# run prints the real times).  Unknown stages count as 5.
WEIGHT = {"00_baselines": 9, "01_regional": 4.6, "02_awp": 7.5, "03_flat_minima": 5.3,
          "04_weight_backdoor": 3.5, "05_mad": 8, "06_ib_features": 1.8, "07_adml": 5,
          "08_acav": 1.5, "09_aae_anomaly": 4.4, "99_report": 0.2}


def upstream(stage: stages_mod.Stage) -> set[str]:
    """Stages whose outputs ``stage`` reads (all of them for the report)."""
    names = {s.name for s in stages_mod.STAGES}
    if stage.name == stages_mod.REPORT:
        return names - {stage.name}
    return {r.split("/", 1)[0] for r in stage.reads} & names


def critical_path(graph: dict[str, set[str]]) -> dict[str, float]:
    """For each stage, its weight plus the heaviest chain of stages that wait for it."""
    down = {s: {t for t, ups in graph.items() if s in ups} for s in graph}
    memo: dict[str, float] = {}

    def length(s):
        if s not in memo:
            memo[s] = WEIGHT.get(s, 5) + max((length(t) for t in down[s]), default=0)
        return memo[s]

    return {s: length(s) for s in graph}


def dvc_executable() -> str:
    """The project environment's ``dvc`` (beside this interpreter), else the one on PATH."""
    own = Path(sys.executable).with_name("dvc")
    return str(own) if own.exists() else (shutil.which("dvc") or "dvc")


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([dvc_executable(), *args], cwd=root, check=check, text=True,
                          capture_output=True)


def is_stale(root: Path, stage: str) -> bool:
    """True if ``dvc status STAGE`` reports the stage changed (or its outputs missing)."""
    import json

    r = _dvc(root, "status", stage, "--json", check=False)
    if r.returncode != 0:
        raise RuntimeError(f"dvc status {stage} failed: {r.stderr.strip()}")
    return bool(json.loads(r.stdout or "{}"))


def _clear_outputs(root: Path, stage: str) -> None:
    """Remove the stage's outputs before it runs, as ``dvc repro`` does."""
    shutil.rmtree(root / "outputs" / stage, ignore_errors=True)
    (root / "results" / stage / "claims.json").unlink(missing_ok=True)
    if stage == stages_mod.REPORT:
        (root / "RESULTS.md").unlink(missing_ok=True)


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def _record(root: Path, jobs, threads, wall, timings, load_start) -> None:
    """``results/pipeline_run.json``: this run's wall time, for the README's timing table
    (``python tools/gen_dvc.py`` renders it).  Only a run that ran every stage it found stale
    writes it, and a partial run (some stages up to date) says which stages it ran."""
    import datetime
    import json

    stages_ran = sorted(timings)
    (root / stages_mod.PIPELINE_RUN).parent.mkdir(exist_ok=True)
    (root / stages_mod.PIPELINE_RUN).write_text(json.dumps({
        "jobs": jobs, "threads": threads, "wall_seconds": round(wall, 1),
        "date": datetime.date.today().isoformat(), "load_start": load_start,
        "load_end": _load(), "stages_run": stages_ran,
        "all_stages": len(stages_ran) == len(stages_mod.STAGES),
        "process_seconds": timings}, indent=2) + "\n")


def grants(running: list[str], waiting: bool, jobs: int, threads: int) -> dict[str, int]:
    """Threads each running stage may use: ``threads`` each, plus, when nothing else could start
    (``waiting`` is False: no stale stage is ready), the idle slots' threads shared out in
    ``running``'s order.  With 2 jobs of 1 thread, a stage left running alone gets 2."""
    out = {n: threads for n in running}
    if running and not waiting:
        spare = (jobs - len(running)) * threads
        for i in range(spare):
            out[running[i % len(running)]] += 1
    return out


def _grant(path: Path, n: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{n}\n")
    tmp.replace(path)  # atomic: a reader sees the old or the new number, never half


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def repro(jobs: int = 2, threads: int | None = None, root=None, only=None,
          heartbeat: float = 60.0, grant: bool = False) -> int:
    """Run the stale stages with ``jobs`` workers (see the module docstring).  ``only``: stage
    names to consider (default: all); ``grant``: give an idle core's threads to the stages
    left running (faster tail, numbers no longer fixed by the commit).  Returns 0 when every
    stage is up to date at the end."""
    from ..core.progress import GRANT_ENV  # the file name the stages' progress bars read

    root = Path(root or repo_root())
    reg = {s.name: s for s in stages_mod.STAGES if only is None or s.name in only}
    graph = {n: upstream(s) & set(reg) for n, s in reg.items()}
    priority = critical_path(graph)
    threads = threads or (1 if jobs > 1 else None)
    grant = bool(grant and threads)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    print(f"advlab repro: {len(reg)} stages, {jobs} at a time"
          f"{f', {threads} thread(s) each' if threads else ''}; logs in logs/", flush=True)
    r = _dvc(root, "repro", stages_mod.DATA_STAGE, check=False)
    if r.returncode != 0:
        print(r.stdout + r.stderr, file=sys.stderr)
        return r.returncode
    env = dict(os.environ)
    if threads:
        env["ADVLAB_THREADS"] = str(threads)
    done, failed, skipped = set(), set(), set()
    timings: dict[str, float] = {}
    load_start = _load()
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    granted: dict[str, int] = {}
    t_start, last_beat = time.perf_counter(), time.perf_counter()
    while True:
        blocked = {n for n in reg if graph[n] & (failed | skipped)} - done - failed - skipped
        skipped |= blocked
        ready = sorted((n for n in reg if n not in done | failed | skipped | set(running)
                        and graph[n] <= done), key=lambda n: -priority[n])
        for n in ready:
            if len(running) >= jobs:
                break
            if not is_stale(root, n):
                print(f"  {n}: up to date", flush=True)
                done.add(n)
                continue
            _clear_outputs(root, n)
            log = open(logs / f"{n}.log", "w")  # noqa: SIM115 - closed when the worker ends
            grant_file = logs / f"{n}.threads"
            if grant:
                _grant(grant_file, threads)
            p = subprocess.Popen(["bash", "tools/advlab", "run", n], cwd=root,
                                 env={**env, GRANT_ENV: str(grant_file.resolve())}
                                 if grant else env,
                                 stdout=log, stderr=subprocess.STDOUT)
            running[n] = (p, time.perf_counter(), log)
            print(f"  {n}: started ({_fmt(time.perf_counter() - t_start)})", flush=True)
        if not running:
            if ready:
                continue  # skipped up-to-date stages may have unblocked others
            break
        if grant:
            waiting = any(n not in running and n not in done for n in ready)
            for n, k in grants(list(running), waiting, jobs, threads).items():
                if k != granted.get(n, threads):
                    _grant(logs / f"{n}.threads", k)
                    print(f"  {n}: {k} threads (nothing else can start)" if k > threads
                          else f"  {n}: back to {k} thread(s)", flush=True)
                granted[n] = k
        time.sleep(0.5)
        for n, (p, t0, log) in list(running.items()):
            if p.poll() is None:
                continue
            log.close()
            del running[n]
            took = _fmt(time.perf_counter() - t0)
            if p.returncode == 0:
                c = _dvc(root, "commit", "--force", n, check=False)
                if c.returncode == 0:
                    done.add(n)
                    timings[n] = round(time.perf_counter() - t0, 1)
                    print(f"  {n}: done in {took}", flush=True)
                    continue
                print(f"  {n}: dvc commit failed: {c.stderr.strip()}", flush=True)
            else:
                tail = (logs / f"{n}.log").read_text().strip().splitlines()[-15:]
                print(f"  {n}: FAILED after {took} (logs/{n}.log):\n    "
                      + "\n    ".join(tail), flush=True)
            failed.add(n)
        if running and time.perf_counter() - last_beat > heartbeat:
            last_beat = time.perf_counter()
            print("  ... running: " + ", ".join(
                f"{n} {_fmt(time.perf_counter() - t0)}" for n, (_, t0, _) in running.items()),
                flush=True)
    wall = time.perf_counter() - t_start
    total = _fmt(wall)
    if timings and not (failed or skipped):
        _record(root, jobs, threads, wall, timings, load_start)
    if failed or skipped:
        print(f"advlab repro: {len(failed)} failed ({', '.join(sorted(failed))}), "
              f"{len(skipped)} not run because they need them; {total}", file=sys.stderr)
        return 1
    print(f"advlab repro: all stages done in {total}; checking with `dvc repro`", flush=True)
    final = subprocess.run([dvc_executable(), "repro", *(sorted(reg) if only else [])],
                           cwd=root)
    return final.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m advlab repro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", "-j", type=int, default=2, help="stages at a time (default 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per stage (default: 1 when jobs > 1)")
    ap.add_argument("--grant-idle-threads", action="store_true",
                    help="give an idle core's threads to the stages left running (a faster "
                         "tail; their numbers then depend on the schedule)")
    ap.add_argument("stages", nargs="*", help="only these stages (default: all)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    known = {s.name for s in stages_mod.STAGES}
    unknown = [s for s in args.stages if s not in known]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; known: {sorted(known)}")
    return repro(args.jobs, args.threads, only=set(args.stages) or None,
                 grant=args.grant_idle_threads)
