"""Unit tests of advlab.aae (adversarial autoencoders, ITSR, anomaly metrics): tiny models and
random or synthetic data, the whole file in a few seconds."""
import inspect
import math

import numpy as np
import pytest
import torch

from advlab.papers import aae_anomaly as aae

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/papers/conftest.py


def _toy_images(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g)


# --------------------------------------------------------------------------- data
def test_contamination_count_labels_and_seed():
    y = torch.tensor([0] * 60 + [2] * 30 + [9] * 30)
    x = torch.arange(len(y)).float().view(-1, 1, 1, 1)
    for alpha, k in [(0.0, 0), (0.01, 0), (0.05, 2), (0.2, 10), (1 / 3, 20)]:
        cs = aae.contaminate(x, y, 0, 2, alpha, 40, seed=3)
        assert aae.n_contaminants(alpha, 40) == k == int(cs.is_anomaly.sum())
        assert len(cs.x) == 40 + k
        assert (y[cs.index][cs.is_anomaly] == 2).all() and (y[cs.index][~cs.is_anomaly] == 0).all()
        assert torch.equal(cs.x.flatten(), cs.index.float())       # x and index agree
        assert len(set(cs.index.tolist())) == len(cs.index)        # no duplicates
    a = aae.contaminate(x, y, 0, 2, 0.2, 40, seed=3)
    b = aae.contaminate(x, y, 0, 2, 0.2, 40, seed=3)
    c = aae.contaminate(x, y, 0, 2, 0.2, 40, seed=4)
    assert torch.equal(a.index, b.index) and not torch.equal(a.index, c.index)
    small = aae.contaminate(x, y, 0, 2, 0.05, 40, seed=3)         # paired settings
    assert torch.equal(small.index[:40], a.index[:40])
    assert set(small.index[40:].tolist()) <= set(a.index[40:].tolist())
    other = aae.contaminate(x, y, 0, 9, 0.2, 40, seed=3)
    assert torch.equal(other.index[:40], a.index[:40]) and (y[other.index[40:]] == 9).all()
    with pytest.raises(ValueError):
        aae.contaminate(x, y, 0, 2, 0.5, 40, seed=0)              # needs 40 anomalies, has 30


def test_test_split_observed_and_unobserved_share_normals():
    y = torch.tensor([0, 1, 2, 0, 9, 2, 5, 0])
    idx_o, a_o = aae.test_split(y, 0, [2])
    idx_u, a_u = aae.test_split(y, 0, [1, 5, 9])
    assert idx_o.tolist() == [0, 2, 3, 5, 7] and a_o.tolist() == [False, True, False, True, False]
    assert idx_o[~a_o].tolist() == idx_u[~a_u].tolist() == [0, 3, 7]
    assert sorted(idx_u[a_u].tolist()) == [1, 4, 6]


# --------------------------------------------------------------------------- metrics
def test_bacc_tpr_tnr_from_a_hand_made_confusion_matrix():
    # TP = 3, FN = 1, TN = 4, FP = 2
    is_anom = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    m = aae.detection_metrics(is_anom, pred)
    assert m["tpr"] == pytest.approx(3 / 4)
    assert m["tnr"] == pytest.approx(4 / 6)
    assert m["bacc"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert aae.detection_metrics([1, 0], [0, 1])["bacc"] == 0.0
    assert aae.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert aae.auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0


def test_prior_log_likelihood_is_the_closed_form_gaussian():
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * 2
    ref = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob(z)
    assert torch.allclose(aae.prior_log_likelihood(z), ref, atol=1e-5)
    z5 = torch.randn(7, 5)
    ref5 = torch.distributions.Normal(0.0, 1.0).log_prob(z5).sum(1)
    assert torch.allclose(aae.prior_log_likelihood(z5), ref5, atol=1e-5)


def test_thresholds_are_training_percentiles_and_scores_match_decisions():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1000, 2, generator=g)
    s = {"rec": torch.rand(1000, generator=g), "z": z, "loglik": aae.prior_log_likelihood(z)}
    th = aae.fit_thresholds(s, rec_pct=90, lik_pct=10)
    assert th.rec == pytest.approx(float(np.percentile(s["rec"].numpy(), 90)))
    assert th.loglik == pytest.approx(float(np.percentile(s["loglik"].numpy(), 10)))
    assert th.loglik_max == pytest.approx(-math.log(2 * math.pi))
    assert aae.decide(s, th, "rec").float().mean().item() == pytest.approx(0.10, abs=0.002)
    assert aae.decide(s, th, "lik").float().mean().item() == pytest.approx(0.10, abs=0.002)
    comb = aae.decide(s, th, "combined")
    assert torch.equal(comb, aae.decide(s, th, "rec") | aae.decide(s, th, "lik"))
    for rule in aae.RULES:   # the continuous score crosses 1 exactly where the decision flips
        assert torch.equal(aae.anomaly_score(s, th, rule) > 1, aae.decide(s, th, rule))
    mask = torch.arange(1000) < 500      # a mask restricts the percentile to those samples
    th_m = aae.fit_thresholds(s, 90, 10, mask)
    assert th_m.rec == pytest.approx(float(np.percentile(s["rec"][:500].numpy(), 90)))
    ae_th = aae.fit_thresholds({"rec": s["rec"], "z": z}, 90, 10)
    assert ae_th.loglik is None
    with pytest.raises(ValueError):
        aae.decide(s, ae_th, "lik")


# --------------------------------------------------------------------------- training
def test_negative_weight_flips_that_samples_gradient():
    torch.manual_seed(0)
    model = aae.Autoencoder(16, hidden=8, latent=3)                 # no BN: samples independent
    x = _toy_images(4)
    params = list(model.parameters())

    def grads(w):
        model.zero_grad()
        aae.weighted_mean(aae.per_sample_error(model(x), x), torch.tensor(w)).backward()
        return torch.cat([p.grad.flatten() for p in params]).clone()

    g_only3 = grads([0.0, 0.0, 0.0, 1.0])
    g_pos, g_neg = grads([1.0, 1.0, 1.0, 1.0]), grads([1.0, 1.0, 1.0, -1.0])
    assert torch.allclose(grads([0.0, 0.0, 0.0, -1.0]), -g_only3, atol=1e-7)
    # same normaliser sum|w| = 4: only sample 3's contribution changes sign
    assert torch.allclose(g_neg - g_pos, -2 * g_only3 / 4, atol=1e-6)

    # the same through train_step with plain SGD: parameter updates differ by lr * 2 g_3 / 4
    def delta(w):
        m = aae.Autoencoder(16, hidden=8, latent=3)
        m.load_state_dict(model.state_dict())
        before = torch.cat([p.detach().flatten() for p in m.parameters()])
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        aae.train_step(m, [opt], x, torch.tensor(w), torch.Generator())
        return torch.cat([p.detach().flatten() for p in m.parameters()]) - before

    assert torch.allclose(delta([1.0, 1.0, 1.0, -1.0]) - delta([1.0, 1.0, 1.0, 1.0]),
                          0.1 * 2 * g_only3 / 4, atol=1e-6)


def test_zero_weights_are_dropped_and_all_zero_batches_skipped():
    torch.manual_seed(0)
    model = aae.Autoencoder(16, hidden=8, latent=2, adversarial=True)
    x = _toy_images(6)
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    a = aae.Autoencoder(16, hidden=8, latent=2, adversarial=True)
    b = aae.Autoencoder(16, hidden=8, latent=2, adversarial=True)
    a.load_state_dict(model.state_dict())
    b.load_state_dict(model.state_dict())
    la = aae.train_step(a, aae._optimizers(a, 1e-2), x, w, torch.Generator().manual_seed(0))
    lb = aae.train_step(b, aae._optimizers(b, 1e-2), x[:3], w[:3],
                        torch.Generator().manual_seed(0))
    assert la == pytest.approx(lb)            # zero-weight samples do not even enter BatchNorm
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb)
    before = [p.clone() for p in a.parameters()]
    assert aae.train_step(a, aae._optimizers(a, 1e-2), x, torch.zeros(6), torch.Generator()) \
        is None
    assert all(torch.equal(p, q) for p, q in zip(before, a.parameters()))


def test_scores_use_eval_mode_and_restore_the_mode():
    torch.manual_seed(0)
    model = aae.Autoencoder(16, hidden=8, latent=2, adversarial=True)
    x = _toy_images(30)
    aae.train_autoencoder(model, x, 2, aae.TrainSettings(batch_size=10, seed=0), progress=False)
    model.train()
    s = aae.scores(model, x, batch_size=7)     # batches of 7 must not change eval-mode codes
    assert model.training
    model.eval()
    with torch.no_grad():
        z_eval = model.encode(x)
    model.train()
    with torch.no_grad():
        z_train = model.encode(x)
    assert torch.allclose(s["z"], z_eval, atol=1e-6)
    assert not torch.allclose(s["z"], z_train, atol=1e-3)
    assert torch.allclose(s["loglik"], aae.prior_log_likelihood(z_eval), atol=1e-5)


def test_training_resumes_exactly_from_its_checkpoint(tmp_path):
    x = _toy_images(30)
    st = aae.TrainSettings(batch_size=10, seed=0)

    def fresh():
        torch.manual_seed(0)
        return aae.Autoencoder(16, hidden=8, latent=2, adversarial=True)

    ref = fresh()
    h_ref = aae.train_autoencoder(ref, x, 3, st, progress=False)

    def crash(model, epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        aae.train_autoencoder(fresh(), x, 3, st, checkpoint=ck, epoch_callback=crash,
                              progress=False)
    resumed = fresh()
    h = aae.train_autoencoder(resumed, x, 3, st, checkpoint=ck, progress=False)
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert h[-1]["rec_loss"] == pytest.approx(h_ref[-1]["rec_loss"])
    for p, q in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(p.float(), q.float())
    again = fresh()                  # a finished checkpoint is loaded, not trained further
    assert aae.train_autoencoder(again, x, 3, st, checkpoint=ck, progress=False) == h
    for p, q in zip(again.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    other = fresh()                  # a different config does not resume from it
    assert len(aae.train_autoencoder(other, x, 2, st, checkpoint=ck, progress=False)) == 2


# --------------------------------------------------------------------------- ITSR
def test_itsr_never_sees_labels_and_flags_far_outliers():
    params = inspect.signature(aae.itsr).parameters
    assert not {"y", "labels", "is_anomaly", "anomaly"} & set(params)
    g = torch.Generator().manual_seed(0)
    normal = 0.2 + 0.05 * torch.rand(60, 1, 4, 4, generator=g)
    weird = torch.rand(6, 1, 4, 4, generator=g).round()          # binary noise
    x = torch.cat([normal, weird])
    torch.manual_seed(0)
    model = aae.Autoencoder(16, hidden=16, latent=2, adversarial=True)
    cfg = aae.ITSRConfig(pretrain_epochs=3, rounds=2, round_epochs=1, retrain_epochs=1,
                         nu=0.1, w_anomaly=-0.1)
    res = aae.itsr(model, x, cfg, aae.TrainSettings(batch_size=22, seed=0), progress=False)
    assert set(res.weights.unique().tolist()) <= {1.0, 0.0, torch.tensor(-0.1).item()}
    assert (res.weights < 0).any()
    r1, r2 = (set(c.tolist()) for c in res.candidates)
    assert r1 <= r2                                          # cumulative refinement
    assert set(torch.nonzero(res.weights <= 0).flatten().tolist()) == r2
    assert not model.training
    assert set(res.errors) == {"pretrain", "refined", "final"}
    with pytest.raises(ValueError):
        aae.itsr(aae.Autoencoder(16, 8, 2), x, cfg, aae.TrainSettings())


def test_ocsvm_rejects_about_nu_and_far_points():
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(200, 2, generator=g), torch.tensor([[8.0, 8.0], [-9.0, 7.0]])])
    out = aae.ocsvm_outliers(z, nu=0.05)
    assert out[-2:].all()
    assert 0.02 <= out.float().mean().item() <= 0.10


# --------------------------------------------------------------------------- the notebook's helpers
def _tiny_detectors(seed=0):
    """AE / AAE / ITSR fitted for one epoch per phase on 40 random 4x4 'normals' + 4 bright
    'anomalies', scored on 20 test images (labels 0 = normal, 1 = anomaly, 2 = other)."""
    g = torch.Generator().manual_seed(seed)
    x_tr = torch.cat([0.3 * torch.rand(40, 1, 4, 4, generator=g),
                      0.7 + 0.3 * torch.rand(4, 1, 4, 4, generator=g)])
    x_te = torch.cat([0.3 * torch.rand(10, 1, 4, 4, generator=g),
                      0.7 + 0.3 * torch.rand(10, 1, 4, 4, generator=g)])
    y_te = torch.tensor([0] * 10 + [1] * 6 + [2] * 4)
    exp = aae.Experiment(hidden=8, ae_latent=2, aae_latent=2, ae_epochs=1, aae_epochs=1,
                         itsr=aae.ITSRConfig(1, 1, 1, 1, nu=0.1),
                         settings=aae.TrainSettings(batch_size=16, seed=seed))
    return aae.fit_detectors(x_tr, x_te, exp, progress=False), y_te


def test_latent_explorer_rethresholds_on_each_update():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    det, y_te = _tiny_detectors()
    w = aae.latent_explorer({"toy": (det, 1)}, y_te, 0, ["n", "a", "o"], display=False)
    first = dict(w.result)
    assert first["setting"] == "toy" and first["method"] == "itsr" and 0 <= first["bacc"] <= 1
    setting, method, rec_pct, lik_pct = w.kwargs_widgets
    assert not rec_pct.continuous_update and not lik_pct.continuous_update
    rec_pct.value = 50.0          # a lower reconstruction threshold flags at least as many
    assert w.result["rec_pct"] == 50.0 and w.result["n_flagged"] >= first["n_flagged"]
    assert w.result != first
    method.value = "aae"
    assert w.result["method"] == "aae"


def test_per_seed_difference_and_summary_value_on_a_hand_made_table():
    import pandas as pd

    rows = [{"data": "d", "seed": s, "anomaly": an, "test": "observed", "alpha": a,
             "detector": det, "bacc": b, "tpr": b, "tnr": b, "auroc": b}
            for s, an, a, det, b in [(0, "P", 0.01, "ITSR", 0.8), (0, "P", 0.01, "AAE", 0.7),
                                     (0, "P", 0.05, "ITSR", 0.6), (0, "P", 0.05, "AAE", 0.6),
                                     (1, "P", 0.01, "ITSR", 0.9), (1, "P", 0.01, "AAE", 0.5),
                                     (1, "P", 0.05, "ITSR", 0.7), (1, "P", 0.05, "AAE", 0.7)]]
    df = pd.DataFrame(rows)
    d = aae.per_seed_difference(df, ["P"], "observed", [0.01, 0.05], "ITSR", "AAE")
    assert d.to_dict() == pytest.approx({0: 0.05, 1: 0.2})
    s = aae.summarise(df)
    assert aae.summary_value(s, "ITSR", "P", 0.01, "bacc") == pytest.approx(0.85)
    assert math.isnan(aae.summary_value(s, "ITSR", "Q", 0.01, "bacc"))
    assert aae.seed_stat([0.05, 0.2]).startswith("+0.125 ± 0.106 over 2 seeds")
