"""Params: profiles overlay params.yaml, sections are addressed by slug, and bad values fail
before any work, naming the key and what is allowed."""
import shutil

import pytest
import yaml

from advlab.pipeline import params

from ..conftest import ROOT


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
    edit(repo / "profiles" / "smoke.yaml", lambda d: d["baselines"].update(at_epochz=1))
    with pytest.raises(params.ParamsError, match="at_epochz"):
        params.resolve("00_baselines", "smoke", root=repo)


@pytest.mark.parametrize("key,value,match", [
    ("dataset", "imagenet", "allowed:|one of \\['cifar10', 'fashion_mnist', 'mnist5k'\\]"),
    ("arch", "resnet9000", "one of \\[.*'small_cnn'"),
    ("eps", 8, "a number in \\[0, 1\\]"),
    ("eps", "0.1", "a number in \\[0, 1\\]"),
    ("at_epochs", -1, "an integer in \\[1, inf\\]"),
    ("at_epochs", 2.5, "an integer"),
    ("device", "tpu", "one of \\['auto', 'cpu', 'cuda'\\]"),
    ("aa_version", "full", "one of \\['lite', 'standard'\\]"),
])
def test_bad_values_name_the_key(repo, key, value, match):
    section = "common" if key in ("dataset", "device") else "baselines"
    edit(repo / "params.yaml", lambda d: d[section].update({key: value}))
    with pytest.raises(params.ParamsError, match=match) as e:
        params.resolve("00_baselines", root=repo)
    assert f"baselines.{key}:" in str(e.value)


def test_a_switch_takes_only_true_or_false(repo):
    edit(repo / "params.yaml", lambda d: d["aae_anomaly"].update(itsr_cumulative="yes"))
    with pytest.raises(params.ParamsError, match="aae_anomaly.itsr_cumulative:.*true or false"):
        params.resolve("09_aae_anomaly", root=repo)


def test_knobs_without_a_naming_rule_are_checked_too(repo):
    """The old suffix rules let `ib_beta: -1` pass and rejected `n_sigma: 0.5`; declarations
    check what each knob is."""
    edit(repo / "params.yaml", lambda d: d["awp"].update(gammas=[-0.01]))
    with pytest.raises(params.ParamsError, match="awp.gammas: item 0"):
        params.resolve("02_awp", root=repo)
    edit(repo / "params.yaml", lambda d: d["awp"].update(gammas=[0.01], momentum=1.5))
    with pytest.raises(params.ParamsError, match="awp.momentum"):
        params.resolve("02_awp", root=repo)


def test_unknown_key_in_params_yaml_is_rejected(repo):
    edit(repo / "params.yaml", lambda d: d["mad"].update(sparsitie=[0.5]))
    with pytest.raises(params.ParamsError, match="mad.sparsitie: unknown parameter"):
        params.resolve("05_mad", root=repo)


def test_stage_names_map_to_sections():
    assert params.section_of("00_baselines") == "baselines"
    assert params.section_of("09_aae_anomaly") == "aae_anomaly"
    assert params.section_of("broken") == "broken"
    assert all(not k[0].isdigit() for k in params.load(ROOT)), "-S needs sections without digits"


def test_missing_section_and_unknown_profile(repo):
    with pytest.raises(params.ParamsError, match="no section 'nope'"):
        params.resolve("42_nope", root=repo)
    with pytest.raises(params.ParamsError, match="unknown profile"):
        params.resolve("00_baselines", "huge", root=repo)
