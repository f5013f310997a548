"""Train one model outside the notebooks, data-parallel on as many processes as torchrun gives:

    torchrun --nproc_per_node 4 -m advlab train --dataset cifar10 --arch preact_resnet18 \\
        --method pgd_at --eps 0.0314 --steps 10 --epochs 200 --batch-size 128 --lr 0.1 \\
        --amp --channels-last --out checkpoints/pgd_at_cifar10.pt

(``python -m advlab train ...`` without torchrun trains in one process.)  This is how a lab
trains the paper profile's large models on a multi-GPU machine; the notebooks then load the
checkpoint (``core.training.load_checkpoint``).  Training is ``core.training.fit`` exactly,
made data-parallel by ``core.distributed`` (same update as one process: a test checks it on
CPU with two gloo processes).  ``--amp`` (bfloat16 autocast) and ``--channels-last`` act on
CUDA only.  The checkpoint is written by rank 0, every epoch, and an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m advlab train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--method", default="pgd_at")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--n-train-per-class", type=int, default=None,
                    help="stratified subset (default: the whole training split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", required=True, help="checkpoint path (.pt)")
    args = ap.parse_args(argv)

    import torch

    from ..core import data, distributed, models, training

    training.Method(args.method, args.eps, steps=args.steps)  # fail early on a bad method/eps
    if args.arch not in models.MODELS:
        ap.error(f"unknown --arch {args.arch!r}; allowed: {sorted(models.MODELS)}")
    distributed.init_from_env()
    training.seed_everything(args.seed)
    info = data.dataset_info(args.dataset)
    x, y = data.load_dataset(args.dataset, "train")
    if args.n_train_per_class:
        idx = data.stratified_indices(y, args.n_train_per_class, seed=args.seed)
        x, y = x[idx], y[idx]
    dev = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available()
                       else "cpu")
    torch.manual_seed(args.seed)  # the same initial weights on every process
    model = models.create_model(args.arch, info.num_classes, info.shape[0]).to(dev)
    cfg = training.TrainConfig(args.epochs, args.batch_size, args.lr, seed=args.seed,
                               amp=args.amp, channels_last=args.channels_last)
    res = training.fit(model, (x, y), training.Method(args.method, args.eps, steps=args.steps),
                       cfg, checkpoint=args.out, meta={"arch": args.arch,
                                                       "dataset": args.dataset},
                       desc=f"train[{distributed.world_size()} proc]")
    if distributed.rank() == 0:
        last = res.history[-1] if res.history else {}
        print(f"trained {args.arch} on {len(x)} images x {args.epochs} epochs with "
              f"{distributed.world_size()} process(es): loss {last.get('train_loss', 0):.4f}; "
              f"checkpoint {args.out}", file=sys.stderr)
    if distributed.active():
        torch.distributed.destroy_process_group()
    return 0
