"""The training loop learns, its hooks fire in order, checkpoints round-trip as data, and an
interrupted run resumes to exactly the weights of an uninterrupted one."""
import pytest
import torch

from advlab.core import evaluation, models, training


def small_run(fmnist, method="pgd_at", epochs=2, **kw):
    torch.manual_seed(0)
    model = models.create_model("small_cnn", width=8)
    cfg = training.TrainConfig(epochs=epochs, batch_size=100, lr=0.05, seed=0)
    x, y = fmnist[0][:600], fmnist[1][:600]
    res = training.fit(model, (x, y), training.Method(method, eps=0.1, steps=2), cfg,
                       progress=False, **kw)
    return res


def test_a_tiny_run_learns(fmnist):
    torch.manual_seed(0)
    model = models.create_model("small_cnn", width=8)
    before = evaluation.accuracy(model, fmnist[2], fmnist[3])
    cfg = training.TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="constant")
    res = training.fit(model, fmnist[:2], training.Method("standard"), cfg, progress=False)
    after = evaluation.accuracy(model, fmnist[2], fmnist[3])
    assert after > 0.6 and after > before + 0.3
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]


@pytest.mark.parametrize("method", ["pgd_at", "trades", "mart"])
def test_adversarial_methods_train(fmnist, method):
    res = small_run(fmnist, method, epochs=1)
    assert torch.isfinite(torch.tensor(res.history[0]["train_loss"]))
    assert not res.model.training  # fit leaves the model in eval mode


class Recorder(training.TrainingHook):
    def __init__(self):
        self.calls = []

    def before_update(self, model, x, x_adv, y, loss_fn):
        assert model.training and x_adv.shape == x.shape
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
        self.calls.append(("before", loss_fn(model, x, x_adv, y).item()))

    def after_update(self, model):
        self.calls.append(("after", None))


def test_hooks_fire_around_every_update(fmnist):
    rec = Recorder()
    small_run(fmnist, epochs=1, hooks=[rec])
    kinds = [k for k, _ in rec.calls]
    assert kinds == ["before", "after"] * 6  # 600 images / batch 100


def test_checkpoint_round_trip_is_data_only(tmp_path):
    model = models.create_model("small_cnn", width=8)
    path = tmp_path / "m.pt"
    training.save_checkpoint(path, model, {"arch": "small_cnn", "epoch": 3, "metrics": {"a": 0.5}})
    other = models.create_model("small_cnn", width=8)
    blob = training.load_checkpoint(path, other)  # weights_only=True inside
    assert blob["meta"]["arch"] == "small_cnn" and blob["meta"]["epoch"] == 3
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        training.load_checkpoint(tmp_path / "nope.pt")


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_exactly(fmnist, tmp_path):
    full = small_run(fmnist, epochs=3).model.state_dict()
    ckpt = tmp_path / "run.pt"

    def crash_at_2(model, epoch):
        if epoch == 2:
            raise Interrupt
        return {}

    with pytest.raises(Interrupt):
        small_run(fmnist, epochs=3, checkpoint=ckpt, epoch_callback=crash_at_2)
    assert training.load_checkpoint(ckpt)["meta"]["epoch"] == 1
    res = small_run(fmnist, epochs=3, checkpoint=ckpt)
    assert res.resumed_from == 1 and len(res.history) == 3
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_changed_config_does_not_resume(fmnist, tmp_path):
    ckpt = tmp_path / "run.pt"
    small_run(fmnist, epochs=1, checkpoint=ckpt)
    res = small_run(fmnist, "trades", epochs=1, checkpoint=ckpt)
    assert res.resumed_from == 0


def test_piecewise_schedule():
    cfg = training.TrainConfig(epochs=8, lr=0.1, schedule="piecewise", milestones=(0.5, 0.75))
    assert [round(cfg.lr_at(e), 6) for e in range(8)] == [0.1] * 4 + [0.01] * 2 + [0.001] * 2


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="allowed"):
        training.Method("free_at")
