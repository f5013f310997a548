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
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < {seconds}:
    step(); n += 128
print(n / (time.perf_counter() - t0))
"""


def _spin(stop):
    while not stop.is_set():
        pass


def measure(workers: int, threads: int, passive: bool, busy: int, seconds: float) -> float:
    """Aggregate images/s of ``workers`` concurrent processes of ``threads`` threads each,
    beside ``busy`` spinning processes."""
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
        return sum(float(p.communicate()[0].strip()) for p in procs)
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
    args = ap.parse_args(argv)
    out = {"cores": os.cpu_count(), "busy": args.busy, "seconds": args.seconds,
           "load_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
           "shapes": {}}
    for name, w, t, passive in SHAPES:
        idle = measure(w, t, passive, 0, args.seconds)
        loaded = measure(w, t, passive, args.busy, args.seconds)
        out["shapes"][name] = {"idle_img_per_s": round(idle, 1),
                               "loaded_img_per_s": round(loaded, 1),
                               "slowdown": round(idle / loaded, 2)}
        print(f"{name:38s} idle {idle:7.1f} img/s   beside {args.busy} busy: {loaded:7.1f} "
              f"img/s   slowdown {idle / loaded:.2f}x", flush=True)
    (HERE / "load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {HERE / 'load.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
