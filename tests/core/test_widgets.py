"""The shared widgets build headless and update (a widget first breaks in front of a class
otherwise: the pipeline never builds them)."""
import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from advlab.core import widgets  # noqa: E402


def _toy_models():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    b = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    return {"a": a, "b": b}


def test_epsilon_explorer_updates_on_each_control():
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    w = widgets.epsilon_explorer(_toy_models(), x, y, ["c0", "c1", "c2"], eps_max=0.5,
                                 steps=3, display=False)
    first = dict(w.result)
    assert first["model"] == "a" and first["index"] == 0
    model_w, index_w, eps_w = w.kwargs_widgets
    assert not index_w.continuous_update and not eps_w.continuous_update
    eps_w.value = 0.4
    assert w.result["eps"] == 0.4 and w.result != first
    model_w.value = "b"
    index_w.value = 3
    assert w.result["model"] == "b" and w.result["index"] == 3


def test_epsilon_explorer_accepts_a_single_model():
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    w = widgets.epsilon_explorer(_toy_models()["a"], x, y, ["c0", "c1", "c2"], display=False)
    assert w.result["model"] == "model" and 0 <= w.result["pred"] < 3
