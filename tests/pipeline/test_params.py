"""Params: profiles overlay params.yaml, and bad values fail naming the key and what's allowed."""
import shutil

import pytest
import yaml

from advlab import params

from .conftest import ROOT


@pytest.fixture
def repo(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "lib" / "advlab").mkdir(parents=True)
    return tmp_path


def edit(path, fn):
    d = yaml.safe_load(path.read_text())
    fn(d)
    path.write_text(yaml.safe_dump(d))


def test_default_and_smoke_resolve(repo):
    d = params.resolve("00_baselines", root=repo)
    s = params.resolve("00_baselines", "smoke", root=repo)
    assert d["profile"] == "default" and s["profile"] == "smoke"
    assert s["at_epochs"] < d["at_epochs"] and s["eps"] == d["eps"]


def test_every_stage_resolves_under_every_profile():
    for stage in params.stages(ROOT):
        for prof in params.PROFILES:
            assert params.resolve(stage, prof, ROOT)["profile"] == prof


def test_unknown_overlay_key(repo):
    edit(repo / "profiles" / "smoke.yaml", lambda d: d["00_baselines"].update(at_epochz=1))
    with pytest.raises(params.ParamsError, match="at_epochz"):
        params.resolve("00_baselines", "smoke", root=repo)


@pytest.mark.parametrize("key,value,match", [
    ("dataset", "imagenet", "allowed: \\['cifar10', 'fashion_mnist', 'mnist5k'\\]"),
    ("arch", "resnet9000", "unknown model"),
    ("eps", 8, "eps must be a number in \\[0, 1\\]"),
    ("at_epochs", -1, "non-negative integer"),
    ("device", "tpu", "allowed"),
])
def test_bad_values_name_the_key(repo, key, value, match):
    edit(repo / "params.yaml", lambda d: d["00_baselines"].update({key: value}))
    with pytest.raises(params.ParamsError, match=match) as e:
        params.resolve("00_baselines", root=repo)
    assert key in str(e.value)


def test_missing_section_and_unknown_profile(repo):
    with pytest.raises(params.ParamsError, match="no section '42_nope'"):
        params.resolve("42_nope", root=repo)
    with pytest.raises(params.ParamsError, match="unknown profile"):
        params.resolve("00_baselines", "huge", root=repo)
