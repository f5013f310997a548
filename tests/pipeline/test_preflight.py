"""Pre-flight (``notebook.setup`` before any work): the dataset is one the stage supports, and
every size knob fits the dataset's per-class counts, else a message naming the knob(s), the
dataset and the largest value that fits."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from advlab.core import data
from advlab.pipeline import notebook, params, stages
from advlab.pipeline.schema import Int, ParamsError, Size, check_sizes

from ..conftest import ROOT

needs_data = pytest.mark.skipif(not (ROOT / "data" / "mnist5k").exists(),
                                reason="data/ missing: run `make data`")

TOY = {"val": Size("train"), "train": Size("train", disjoint="val", null=True),
       "eval": Size("test"), "aa": Size(within="eval"), "epochs": Int(1),
       "dataset": Int(0)}


def counts(per_class):
    return lambda name, split: per_class[split]


def toy(**kw):
    return {"val": 10, "train": 30, "eval": 20, "aa": 5, "epochs": 1, "dataset": 0, **kw}


def test_sizes_that_fit_pass_and_return_the_largest_values():
    bounds = check_sizes(toy(), TOY, counts({"train": 40, "test": 20}))
    assert bounds == {"val": 40, "train": 30, "eval": 20, "aa": 20}
    check_sizes(toy(train=None), TOY, counts({"train": 40, "test": 20}))  # null: the rest


def test_a_size_too_large_for_its_split_names_knob_dataset_and_largest_value():
    with pytest.raises(ParamsError) as e:
        check_sizes(toy(eval=50, aa=5), TOY, counts({"train": 40, "test": 20}))
    msg = str(e.value)
    assert "eval (50)" in msg and "20 test images per class" in msg
    assert "largest value that fits is 20" in msg and "dataset 0" in msg


def test_disjoint_sizes_are_checked_together():
    with pytest.raises(ParamsError) as e:
        check_sizes(toy(val=15, train=30), TOY, counts({"train": 40, "test": 20}))
    msg = str(e.value)
    assert "train (30) + val (15)" in msg and "need 45" in msg
    assert "largest train that fits is 25" in msg
    with pytest.raises(ParamsError, match="gets nothing"):
        check_sizes(toy(val=40, train=None), TOY, counts({"train": 40, "test": 20}))


def test_a_subset_cannot_exceed_the_set_it_is_drawn_from():
    with pytest.raises(ParamsError, match=r"aa \(8\) is drawn from eval's examples \(6 per "
                                          r"class.*largest value that fits is 6"):
        check_sizes(toy(eval=6, aa=8), TOY, counts({"train": 40, "test": 20}))


def test_every_problem_is_reported_at_once():
    with pytest.raises(ParamsError) as e:
        check_sizes(toy(val=50, eval=30), TOY, counts({"train": 40, "test": 20}))
    assert "val (50)" in str(e.value) and "eval (30)" in str(e.value)


def toy_dataset(tmp_path, per_class_train, per_class_test):
    """A class-sorted mnist5k stand-in under tmp_path (only the labels are read)."""
    folder = tmp_path / "mnist5k"
    folder.mkdir()
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        np.save(folder / f"{split}_labels.npy", np.repeat(np.arange(10, dtype=np.uint8), n))
    return tmp_path


def test_preflight_reads_the_toy_datasets_counts(tmp_path):
    root = toy_dataset(tmp_path, 12, 4)
    assert data.class_counts("mnist5k", "train", root) == {c: 12 for c in range(10)}
    p = params.resolve("06_ib_features", "smoke", ROOT)
    p.update(dataset="mnist5k", n_eval_per_class=4, n_attack_per_class=4)
    assert notebook.preflight("06_ib_features", p, root)["n_eval_per_class"] == 4
    p.update(n_eval_per_class=5)
    with pytest.raises(ParamsError, match=r"n_eval_per_class \(5\): dataset 'mnist5k' has 4 "
                                          r"test images per class; the largest value that fits "
                                          r"is 4"):
        notebook.preflight("06_ib_features", p, root)


def test_a_dataset_the_stage_does_not_support_is_rejected_with_the_reason():
    p = params.resolve("08_acav", "smoke", ROOT)
    p["dataset"] = "mnist5k"
    with pytest.raises(ParamsError, match=r"08_acav does not support 'mnist5k'.*Fashion-MNIST "
                                          r"classes"):
        notebook.preflight("08_acav", p)


@needs_data
def test_mnist5k_on_the_default_profile_fails_in_setup_before_any_work(tmp_path):
    """01_regional's default sizes (1,500 training and 200 test images per class) cannot fit
    MNIST-5k (400 / 100): setup says so before it creates any folder or loads any image."""
    p = params.resolve("01_regional", "default", ROOT)
    p["dataset"] = "mnist5k"
    out = tmp_path / "out"
    with pytest.raises(ParamsError) as e:
        notebook.setup("01_regional", {**p, "out_dir": str(out)})
    msg = str(e.value)
    assert "n_train_per_class (1500)" in msg and "n_eval_per_class (200)" in msg
    assert "'mnist5k'" in msg and "largest value that fits is 400" in msg
    assert "largest value that fits is 100" in msg
    assert not out.exists()


@needs_data
def test_the_runner_stops_in_the_setup_cell_with_that_message(tmp_path):
    """End to end: `tools/advlab run` on a checkout whose params.yaml says mnist5k."""
    for name in ("lib", "tools", "notebooks", "profiles", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["common"]["dataset"] = "mnist5k"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    env = {k: v for k, v in os.environ.items() if k not in ("ADVLAB_ROOT", "ADVLAB_PROFILE")}
    env["ADVLAB_PYTHON"] = sys.executable
    r = subprocess.run(["bash", str(tmp_path / "tools" / "advlab"), "run", "01_regional",
                        "--no-html", "--quiet", "--out-dir", str(tmp_path / "out")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "ParamsError: sizes that do not fit the dataset" in r.stderr
    assert "n_train_per_class (1500)" in r.stderr and "largest value that fits is 400" in r.stderr
    cells = json.loads((tmp_path / "out" / "01_regional.ipynb").read_text())["cells"]
    failed = [c for c in cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "notebook.setup(" in "".join(failed[0]["source"])
    assert not (tmp_path / "out" / "figures").exists()


# --------------------------------------------------------------------------- declarations
SIZE_NAME = re.compile(r"(^|_)n_(\w+_)?per_class$|(^|_)n_normal$")


@pytest.mark.parametrize("stage", [s.name for s in stages.STAGES])
def test_every_size_knob_is_declared_as_a_size(stage):
    """A knob counting examples per class is a ``Size`` (so the pre-flight checks it), and
    what it is drawn with or within is a knob of the same stage."""
    declared = params.knobs(stage)
    for k, kn in declared.items():
        if SIZE_NAME.search(k):
            assert isinstance(kn, Size), f"{stage}: {k} should be a schema.Size"
        if isinstance(kn, Size):
            assert set(kn.disjoint) | set(kn.within) | {kn.dataset} <= set(declared), (stage, k)


def test_the_registry_knows_which_datasets_live_in_data_dvc():
    assert set(stages.DATA_DVC) == {n for n, i in data.DATASETS.items() if i.in_data_dvc}
    for s in stages.STAGES:
        assert set(s.supported) <= set(data.DATASETS), s.name
        if s.paper and set(stages.DATA_DVC) - set(s.datasets):
            assert len(s.why) > 40, f"{s.name} leaves out an offline dataset: say why"


def test_every_stage_that_can_read_a_dataset_depends_on_its_stamp():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for s in stages.STAGES:
        stamps = {d for d in dvc[s.name]["deps"] if d.startswith("results/data/")}
        assert stamps == {f"results/data/{d}.md5" for d in s.datasets}, s.name


def test_check_fits_names_the_knob_the_source_and_the_largest_value():
    notebook.check_fits("02_awp's subsets", {"n_test_per_class": (20, 20), "n": (None, 3)})
    with pytest.raises(ParamsError, match=r"n_test_per_class \(30\): 02_awp's subsets hold 20 "
                                          r"images per class; the largest value that fits is 20"):
        notebook.check_fits("02_awp's subsets", {"n_test_per_class": (30, 20)})
