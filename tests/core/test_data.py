"""Data: canonical files match data.dvc, corrupt or missing files fail with a fix, subsets are
stratified and reproducible."""
import shutil

import numpy as np
import pytest
import torch
import yaml

from advlab.core import data

from ..conftest import ROOT

needs_data = pytest.mark.skipif(not (ROOT / "data" / "fashion_mnist").exists(),
                                reason="data/ missing: run `make data`")


@needs_data
def test_data_matches_data_dvc():
    assert data.verify(ROOT / "data.dvc") == yaml.safe_load(
        (ROOT / "data.dvc").read_text())["outs"][0]["md5"]


@needs_data
def test_dir_hash_matches_dvc_itself(tmp_path):
    """Our reimplementation of DVC's folder hash agrees with `dvc add` on a fresh folder."""
    import subprocess
    import sys

    folder = tmp_path / "repo" / "d"
    folder.mkdir(parents=True)
    (folder / "a.npy").write_bytes(b"abc")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("hello")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=folder.parent,
                   check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "d"], cwd=folder.parent, check=True)
    spec = yaml.safe_load((folder.parent / "d.dvc").read_text())["outs"][0]
    assert data.dvc_dir_hash(folder) == (spec["md5"], spec["nfiles"], spec["size"])


@needs_data
def test_rebuilt_data_is_byte_identical(tmp_path):
    data.fetch(["fashion_mnist", "mnist5k"], root=tmp_path)
    for name in ("fashion_mnist", "mnist5k"):
        for f in data.FILES:
            assert (tmp_path / name / f).read_bytes() == (ROOT / "data" / name / f).read_bytes()


@needs_data
def test_corrupt_and_missing_files_fail_with_a_fix(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "mnist5k", root / "mnist5k")
    f = root / "mnist5k" / "train_images.npy"
    f.write_bytes(f.read_bytes()[:1000])  # truncated
    with pytest.raises(data.DataError, match="fetch --force"):
        data.load_dataset("mnist5k", "train", root)
    f.unlink()
    with pytest.raises(data.DataError, match="make data"):
        data.load_dataset("mnist5k", "train", root)


def test_verify_detects_a_changed_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "x.npy").write_bytes(b"123")
    md5, n, size = data.dvc_dir_hash(folder)
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text(yaml.safe_dump({"outs": [{"md5": md5, "nfiles": n, "size": size,
                                                  "path": "data"}]}))
    assert data.verify(dvc_file) == md5
    (folder / "x.npy").write_bytes(b"124")
    with pytest.raises(data.DataError, match="does not match"):
        data.verify(dvc_file)


def test_canonical_manifest_hashes_to_data_dvc():
    """The per-file md5s `verify` uses to name a bad file are the manifest of data.dvc."""
    import hashlib
    import json

    entries = [{"md5": v, "relpath": k} for k, v in sorted(data.CANONICAL_MD5.items())]
    md5 = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    assert md5 == yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]["md5"]


@needs_data
def test_verify_names_the_corrupt_missing_and_extra_files_and_the_fix(tmp_path):
    shutil.copytree(ROOT / "data", tmp_path / "data")
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    victim = tmp_path / "data" / "mnist5k" / "test_labels.npy"
    raw = victim.read_bytes()
    victim.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    (tmp_path / "data" / "fashion_mnist" / "test_labels.npy").unlink()
    (tmp_path / "data" / "stray.txt").write_text("x")
    with pytest.raises(data.DataError) as e:
        data.verify(tmp_path / "data.dvc")
    msg = str(e.value)
    assert "mnist5k/test_labels.npy is corrupt" in msg
    assert "fashion_mnist/test_labels.npy is missing" in msg
    assert "stray.txt is not part of the data" in msg
    assert "make data" in msg and "data.dvc is left as it is" in msg


@needs_data
def test_stamps_hold_each_dataset_folder_hash(tmp_path):
    written = data.write_stamps(ROOT / "data", tmp_path)
    assert sorted(p.name for p in written) == ["fashion_mnist.md5", "mnist5k.md5"]
    assert (tmp_path / "mnist5k.md5").read_text().strip() == \
        data.dvc_dir_hash(ROOT / "data" / "mnist5k")[0]


@needs_data
def test_loaded_tensors_have_the_documented_form():
    x, y = data.load_dataset("fashion_mnist", "test", ROOT / "data")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))


def test_stratified_indices_are_balanced_disjoint_and_reproducible():
    y = torch.arange(1000) % 10
    a = data.stratified_indices(y, 20, seed=1)
    assert torch.equal(a, data.stratified_indices(y, 20, seed=1))
    assert torch.equal(torch.bincount(y[a]), torch.full((10,), 20))
    b = data.stratified_indices(y, 20, seed=2, exclude=a)
    assert not np.intersect1d(a.numpy(), b.numpy()).size
    with pytest.raises(ValueError, match="only"):
        data.stratified_indices(y, 101, seed=0)


def test_unknown_and_unavailable_datasets_fail_clearly(monkeypatch, tmp_path):
    with pytest.raises(KeyError, match="allowed"):
        data.dataset_info("imagenet")
    monkeypatch.setenv("ADVLAB_CIFAR10", str(tmp_path))
    with pytest.raises(data.DataError, match="not available offline"):
        data.load_dataset("cifar10", "train")


def _class_sorted_toy(monkeypatch, root, n_train=40, n_test=10):
    """A registered toy dataset stored sorted by class, as MNIST-5k is."""
    info = data.DatasetInfo("toy", (1, 2, 2), tuple(str(c) for c in range(10)), 0.1, 1.0,
                            sizes={"train": 10 * n_train, "test": 10 * n_test})
    monkeypatch.setitem(data.DATASETS, "toy", info)
    (root / "toy").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        i = np.arange(len(y))                               # image i: pixels (i // 256, i % 256)
        x = np.stack([i // 256, i % 256, i * 0, i * 0], 1).reshape(-1, 2, 2).astype(np.uint8)
        np.save(root / "toy" / f"{split}_images.npy", x)
        np.save(root / "toy" / f"{split}_labels.npy", y)
    return info


@pytest.mark.parametrize("n", [1, 7, 40])
def test_subset_helpers_return_every_class_on_class_sorted_labels(n):
    """A slice of a class-sorted array would return the first classes only; every helper
    returns each class in the requested number."""
    y = torch.arange(10).repeat_interleave(40)           # 0,0,...,1,1,...: sorted by class
    x = torch.arange(len(y)).float()[:, None]
    idx = data.stratified_indices(y, n, seed=3)
    assert torch.equal(torch.bincount(y[idx], minlength=10), torch.full((10,), n))
    xs, ys = data.stratified_subset(x, y, n, seed=3)
    assert torch.equal(torch.bincount(ys, minlength=10), torch.full((10,), n))
    assert torch.equal(y[xs[:, 0].long()], ys)            # images and labels stay paired
    if n < 40:
        rest = data.stratified_indices(y, 40 - n, seed=4, exclude=idx)
        assert torch.equal(torch.bincount(y[rest], minlength=10), torch.full((10,), 40 - n))
        assert not np.intersect1d(idx.numpy(), rest.numpy()).size


def test_train_val_test_and_class_counts_on_a_class_sorted_dataset(monkeypatch, tmp_path):
    _class_sorted_toy(monkeypatch, tmp_path)
    assert data.class_counts("toy", "train", tmp_path) == {c: 40 for c in range(10)}
    assert data.class_counts("toy", "test", tmp_path) == {c: 10 for c in range(10)}
    split = data.train_val_test("toy", 25, 15, 6, seed=0, root=tmp_path)
    for name, n in (("train", 25), ("val", 15), ("test", 6)):
        assert torch.equal(torch.bincount(split[name][1], minlength=10), torch.full((10,), n))
    everything = data.train_val_test("toy", None, 15, None, seed=0, root=tmp_path)
    assert torch.equal(torch.bincount(everything["train"][1]), torch.full((10,), 25))
    tr, va = (set(map(bytes, split[k][0].mul(255).round().byte().numpy())) for k in
              ("train", "val"))
    assert not tr & va                                      # disjoint train / validation
    with pytest.raises(ValueError, match="only 25 examples, 26 requested"):
        data.train_val_test("toy", 26, 15, 6, seed=0, root=tmp_path)
