"""How the pipeline's thread policy holds up under background load (issue: speed and scale-out).

Measures PGD-AT training throughput (small_cnn, batch 128, PGD-5, Fashion-MNIST-shaped input)
in the shapes a 2-core machine runs it:

- ``2 workers x 1 thread``: what ``make repro`` does (two stages at a time, one core each);
- ``1 worker x 2 threads``: what a plain ``dvc repro`` of a two-thread stage does, with
  OpenMP's default waiting and with ``OMP_WAIT_POLICY=PASSIVE``;
- ``1 worker x 1 thread``: a single one-thread stage;

each on an idle machine and beside ``--busy`` background processes that spin one core each
(a student's laptop always has something running).  Every measurement is a fresh process (the
OpenMP policy is read at start-up).  Reports aggregate images per second and the slowdown
against the same shape idle; a fair share would be ``cores / (cores - busy)`` at most (2x
with one busy process on 2 cores for a shape that uses both cores).

    python benchmarks/load.py [--busy 1] [--seconds 20]     (writes benchmarks/load.json)

Run it on an otherwise idle machine: its own background load is the only one it should see.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = r"""
import sys, time, torch
sys.path.insert(0, {lib!r})
from advlab.core import models, training
torch.set_num_threads({threads})
torch.manual_seed(0)
m = models.create_model("small_cnn", 10, 1)
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
meth = training.Method("pgd_at", 0.1, steps=5)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
def step():
    xa = meth.adversarial(m, x, y)
    loss = meth.loss(m, x, xa, y)
    opt.zero_grad(); loss.backward(); opt.step()
step(); step()
n, t0, c0 = 0, time.perf_counter(), time.process_time()
while time.perf_counter() - t0 < {seconds}:
    step(); n += 128
wall = time.perf_counter() - t0
print(n / wall, (time.process_time() - c0) / wall)
"""


def _spin(stop):
    while not stop.is_set():
        pass


def measure(workers: int, threads: int, passive: bool, busy: int,
            seconds: float) -> tuple[float, float]:
    """Aggregate images/s of ``workers`` concurrent processes of ``threads`` threads each,
    beside ``busy`` spinning processes, and the cores they got (their CPU seconds per wall
    second, summed)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,)) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        code = WORKER.format(lib=str(HERE.parent / "lib"), threads=threads, seconds=seconds)
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                  stdout=subprocess.PIPE) for _ in range(workers)]
        got = [tuple(map(float, p.communicate()[0].split())) for p in procs]
        return sum(g[0] for g in got), sum(g[1] for g in got)
    finally:
        stop.set()
        for p in spinners:
            p.join()


SHAPES = [("2 workers x 1 thread (make repro)", 2, 1, False),
          ("1 worker x 2 threads", 1, 2, False),
          ("1 worker x 2 threads, OMP passive", 1, 2, True),
          ("1 worker x 1 thread", 1, 1, False)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=1, help="spinning background processes")
    ap.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    ap.add_argument("--repeats", type=int, default=1,
                    help="idle / loaded pairs per shape, alternated (medians reported)")
    ap.add_argument("--shapes", type=int, nargs="*", default=None,
                    help="indices into SHAPES (default: all)")
    args = ap.parse_args(argv)
    out = {"cores": os.cpu_count(), "busy": args.busy, "seconds": args.seconds,
           "load_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
           "shapes": {}}
    for i, (name, w, t, passive) in enumerate(SHAPES):
        if args.shapes is not None and i not in args.shapes:
            continue
        pairs = [(measure(w, t, passive, 0, args.seconds),
                  measure(w, t, passive, args.busy, args.seconds)) for _ in range(args.repeats)]
        idle = statistics.median(p[0][0] for p in pairs)
        loaded = statistics.median(p[1][0] for p in pairs)
        cores_idle = statistics.median(p[0][1] for p in pairs)
        cores_loaded = statistics.median(p[1][1] for p in pairs)
        # slowdown = (cores lost) x (work per CPU-second lost): the first is the scheduler's
        # share, the second what sharing caches and memory bandwidth costs on top
        out["shapes"][name] = {
            "idle_img_per_s": round(idle, 1), "loaded_img_per_s": round(loaded, 1),
            "slowdown": round(idle / loaded, 2),
            "slowdowns": [round(a[0] / b[0], 2) for a, b in pairs],
            "cores_idle": round(cores_idle, 2), "cores_loaded": round(cores_loaded, 2),
            "cpu_share_slowdown": round(cores_idle / cores_loaded, 2),
            "per_cpu_second_slowdown": round((idle / cores_idle) / (loaded / cores_loaded), 2)}
        print(f"{name:38s} idle {idle:7.1f} img/s on {cores_idle:.2f} cores   beside "
              f"{args.busy} busy: {loaded:7.1f} img/s on {cores_loaded:.2f} cores   slowdown "
              f"{idle / loaded:.2f}x (repeats: {out['shapes'][name]['slowdowns']})", flush=True)
    (HERE / "load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {HERE / 'load.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
