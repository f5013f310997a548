"""The helpers every lesson uses: the from-scratch check, live-kernel detection, computed
prose, and equations that render offline in the exported HTML."""
import pytest
import torch

from advlab.pipeline import notebook
from advlab.pipeline.run import math_to_mathml


def test_check_matches_passes_within_tolerance_and_reports_the_difference(capsys):
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert notebook.check_matches("demo", a + 1e-8, a) is None  # a cell echoes nothing
    assert "matches the library (max |diff| = 1e-08)" in capsys.readouterr().out


def test_check_matches_fails_naming_what_differs():
    with pytest.raises(AssertionError, match="one PGD step.*max \\|diff\\| = 0.5"):
        notebook.check_matches("one PGD step", torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]))
    with pytest.raises(AssertionError, match="shape"):
        notebook.check_matches("x", torch.zeros(2, 3), torch.zeros(3, 2))


def test_not_live_under_the_pipeline_or_outside_a_kernel(monkeypatch):
    monkeypatch.delenv(notebook.PIPELINE_ENV, raising=False)
    assert notebook.is_live() is False  # pytest is no Jupyter kernel
    monkeypatch.setenv(notebook.PIPELINE_ENV, "1")
    assert notebook.is_live() is False


def test_say_shows_the_text_once_and_returns_nothing(monkeypatch):
    """A cell ending in ``notebook.say(...)`` must not echo the sentence as a quoted string."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    assert notebook.say("accuracy **0.5**") is None
    assert [o.data for o in shown] == ["accuracy **0.5**"]


def test_math_becomes_mathml_but_code_and_prices_do_not():
    out = math_to_mathml(r"loss $\delta^2$, block $$\max_x f$$, price \$5, `a $b$ c`, 3$ 4$")
    assert out.count("<math") == 2
    assert 'display="block"' in out and 'display="inline"' in out
    assert "`a $b$ c`" in out and r"\$5" in out and "3$ 4$" in out
    assert "$" not in out.replace("`a $b$ c`", "").replace(r"\$5", "").replace("3$ 4$", "")


def test_inline_math_may_wrap_a_line_but_not_a_paragraph():
    out = math_to_mathml("the loss $L(w;\nS)$ here, and a price $5\n\nthen $3 more")
    assert out.count("<math") == 1 and "$5" in out and "$3" in out
