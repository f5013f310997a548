"""Speed figures (not tests): PGD throughput of advlab vs torchattacks on the same model and
batch, PGD-AT training throughput, and the wall time of each stage's last run.

    .venv/bin/python benchmarks/run.py            # writes benchmarks/RESULTS.md

Timings are medians of repeated runs in one process, so the ratio is robust to a machine that
is a bit busy; absolute figures are not.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from advlab.core import attacks, data, models, training

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn, repeats=5, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_pgd(model, x, y, eps=0.1, steps=10, rounds=9):
    """Alternate the two attacks call by call (so load drift hits both alike); medians."""
    import torchattacks

    alpha = 2.5 * eps / steps
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    fns = {"ours": lambda: attacks.pgd(model, x, y, eps, alpha, steps), "ref": lambda: ta(x, y)}
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    ours, ref = statistics.median(times["ours"]), statistics.median(times["ref"])
    return {"ours_img_per_s": len(x) / ours, "torchattacks_img_per_s": len(x) / ref,
            "speed_ratio_ours_over_torchattacks": ref / ours}


def bench_training(x, y, steps=5, n=2048):
    model = models.create_model("small_cnn")
    cfg = training.TrainConfig(epochs=1, batch_size=128, schedule="constant")
    method = training.Method("pgd_at", eps=0.1, steps=steps)
    t = median_time(lambda: training.fit(model, (x[:n], y[:n]), method, cfg, progress=False),
                    repeats=3)
    return {"pgd_at_train_img_per_s": n / t}


def stage_times():
    out = {}
    for p in sorted((ROOT / "outputs").glob("*/run.json")):
        info = json.loads(p.read_text())
        out[info["stage"]] = {"seconds": info["elapsed_seconds"],
                              "profile": info["params"]["profile"]}
    return out


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x, y = data.load_dataset("fashion_mnist", "test", ROOT / "data")
    x, y = x[:512], y[:512]
    model = models.create_model("small_cnn").eval()
    res = {"pgd_small_cnn_b512_10steps": bench_pgd(model, x, y)}
    bn = models.create_model("vgg_mini_bn").eval()
    res["pgd_vgg_mini_bn_b256_10steps"] = bench_pgd(bn, x[:256], y[:256])
    xt, yt = data.load_dataset("fashion_mnist", "train", ROOT / "data")
    res["training"] = bench_training(xt, yt)
    res["stages_last_run"] = stage_times()
    res["machine"] = {"platform": platform.platform(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}
    lines = ["# Benchmark results", "", f"Written by `benchmarks/run.py` on {time.strftime('%Y-%m-%d')}.",
             "", "```json", json.dumps(res, indent=2, default=lambda v: round(v, 3)), "```", ""]
    (ROOT / "benchmarks" / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
