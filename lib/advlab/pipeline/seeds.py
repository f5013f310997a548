"""Seeds through DVC's experiment queue, and a scorecard over them:
``python -m advlab seeds 1 2 [--stages 02_awp ...] [--jobs 1]`` (``make seeds``).

Each seed is one queued experiment, ``dvc exp run --queue -n seed-N -S common.seed=N``, run
by ``dvc queue start`` in its own copy of the repository; the committed run (``HEAD``) counts
as the seed in ``params.yaml``.  With ``--stages``, only those stages (and what they read) run
in each experiment.  When the queue is done, ``SEEDS.md`` lists every claim of those stages
with its verdict on each seed, the spread of the measured value (mean, standard deviation,
min-max) and how many seeds it holds on: a claim that holds on one seed only is not a result.

``python -m advlab seeds --report`` rewrites ``SEEDS.md`` from the experiments already run
(``dvc exp show``), without queueing anything.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from ..paths import repo_root
from . import stages as stages_mod
from .parallel import dvc_executable

PREFIX = "seed-"


def _env(threads: int | None) -> dict:
    """The queue workers are started as ``dvc`` from PATH: put this environment's first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if threads:
        env["ADVLAB_THREADS"] = str(threads)
    return env


def _dvc(root, *args, env=None, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([dvc_executable(), *args], cwd=root, env=env, text=True,
                       capture_output=True)
    if check and r.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def queue_seeds(seeds, stages=None, root=None, env=None) -> list[str]:
    """Queue one experiment per seed; returns their names.  An experiment of the same name
    from an earlier sweep is removed first (the new one replaces it)."""
    root = Path(root or repo_root())
    names = []
    for s in seeds:
        name = f"{PREFIX}{s}"
        _dvc(root, "exp", "remove", name, env=env, check=False)
        # data.dvc as a target makes DVC check out data/ in the experiment's copy
        targets = ["data.dvc", *stages] if stages else []
        _dvc(root, "exp", "run", "--queue", "-n", name, "-S", f"common.seed={s}", *targets,
             env=env)
        names.append(name)
    return names


def run_queue(names, jobs: int = 1, root=None, env=None, poll: float = 5.0) -> dict:
    """Start the queue with ``jobs`` workers and wait; returns {name: status}."""
    root = Path(root or repo_root())
    _dvc(root, "queue", "start", "--jobs", str(jobs), env=env)
    t0 = time.perf_counter()
    while True:
        status = _dvc(root, "queue", "status", env=env).stdout
        rows = {ln.split()[1]: ln.split()[-1] for ln in status.splitlines()
                if len(ln.split()) >= 3 and ln.split()[1] in names}
        if rows and all(v not in ("Queued", "Running") for v in rows.values()):
            return rows
        time.sleep(poll)
        if time.perf_counter() - t0 > 600:
            t0 = time.perf_counter()
            print("  ... " + ", ".join(f"{k}: {v}" for k, v in rows.items()), flush=True)


def _git_show(root, rev, path) -> dict | None:
    r = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True,
                       text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def collect(root=None, stages=None) -> dict[int, dict[str, dict]]:
    """{seed: {stage: claims.json}}: the committed run (``HEAD``) and every ``seed-N``
    experiment of it that succeeded."""
    import yaml

    root = Path(root or repo_root())
    names = [s.name for s in stages_mod.STAGES if s.name != stages_mod.REPORT
             and (not stages or s.name in stages)]
    revs = {int(yaml.safe_load((root / "params.yaml").read_text())["common"]["seed"]): "HEAD"}
    shown = json.loads(_dvc(root, "exp", "show", "--json").stdout or "[]")
    for base in shown:
        for e in base.get("experiments") or []:
            name = e.get("name") or ""
            rev = e["revs"][0]
            if name.startswith(PREFIX) and name[len(PREFIX):].isdigit() and \
                    not rev.get("error"):
                revs[int(name[len(PREFIX):])] = rev["rev"]
    out = {}
    for seed, rev in sorted(revs.items()):
        blobs = {n: _git_show(root, rev, f"results/{n}/claims.json") for n in names}
        out[seed] = {n: b for n, b in blobs.items() if b}
    return out


def seeds_markdown(collected: dict[int, dict[str, dict]]) -> str:
    """Per stage, per claim: the verdict on each seed, the measured value's spread, and on
    how many seeds it holds."""
    seeds = sorted(collected)
    stages = sorted({st for per in collected.values() for st in per})
    abbrev = {"holds": "holds", "does not hold": "**no**", "inconclusive": "*inc.*",
              "not run": "—"}
    lines = [f"Seeds: {', '.join(map(str, seeds))}. A claim is a result only if it holds on "
             "every seed.", ""]
    for st in stages:
        claims = {}
        for s in seeds:
            for c in (collected[s].get(st) or {}).get("claims", []):
                claims.setdefault(c["id"], {"statement": c["statement"], "unit": c.get("unit")})
                claims[c["id"]][s] = c
        lines += [f"## {st}", "",
                  "| claim | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | mean ± sd [min, max] | holds on |",
                  "|---|" + "---|" * len(seeds) + "---|---|"]
        for per in claims.values():
            vals = [per[s]["measured"] for s in seeds if s in per
                    and not math.isnan(per[s]["measured"])]
            n = len(vals)
            mean = sum(vals) / n if n else float("nan")
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
            spread = f"{mean:.3g} ± {sd:.2g} [{min(vals):.3g}, {max(vals):.3g}]" if n else "—"
            held = sum(per[s]["verdict"] == "holds" for s in seeds if s in per)
            ran = sum(s in per for s in seeds)
            cells = " | ".join(abbrev.get(per[s]["verdict"], per[s]["verdict"]) if s in per
                               else "not run" for s in seeds)
            lines.append(f"| {per['statement']} | {cells} | {spread} | {held} of {ran} |")
        lines.append("")
    return "\n".join(lines)


def write_report(root=None, stages=None) -> Path:
    root = Path(root or repo_root())
    text = ("<!-- GENERATED by `python -m advlab seeds` from the committed run and its seed-N "
            "experiments: do not edit. -->\n# Claims over seeds\n\n"
            + seeds_markdown(collect(root, stages)))
    path = root / "SEEDS.md"
    path.write_text(text + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m advlab seeds", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seeds", nargs="*", type=int, help="seeds to run, e.g. 1 2")
    ap.add_argument("--stages", nargs="+", default=None, help="only these stages")
    ap.add_argument("--jobs", "-j", type=int, default=1,
                    help="experiments at a time (default 1; each then uses both cores)")
    ap.add_argument("--report", action="store_true", help="only rewrite SEEDS.md")
    args = ap.parse_args(argv)
    known = {s.name for s in stages_mod.STAGES}
    bad = [s for s in args.stages or [] if s not in known]
    if bad:
        ap.error(f"unknown stage(s) {bad}; known: {sorted(known)}")
    if not args.report and not args.seeds:
        ap.error("give the seeds to run (e.g. `1 2`), or --report")
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    root = repo_root()
    if not args.report:
        env = _env(1 if args.jobs > 1 else None)
        names = queue_seeds(args.seeds, args.stages, root, env)
        print(f"queued {names}; running {args.jobs} at a time (`dvc queue status` to watch)",
              flush=True)
        status = run_queue(names, args.jobs, root, env)
        failed = [n for n, v in status.items() if v != "Success"]
        for n in failed:
            print(f"{n}: {status[n]} (`dvc queue logs {n}`)", file=sys.stderr)
    path = write_report(root, args.stages)
    print(f"wrote {path}")
    return 0 if args.report or not failed else 1
