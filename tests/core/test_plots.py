"""The shared figures mark what they claim to mark (colours, legends outside the data)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import torch  # noqa: E402

from advlab.core import plots  # noqa: E402


def test_image_grid_colours_titles_and_labels_rows():
    fig = plots.image_grid(torch.rand(4, 1, 5, 5), ["a", "b", "c", "d"], ncols=2,
                           title_colors=["tab:green", "tab:red", "black", "tab:red"],
                           row_labels=["first", "second"])
    axes = fig.axes
    assert mcolors.same_color(axes[1].title.get_color(), "tab:red")
    assert mcolors.same_color(axes[0].title.get_color(), "tab:green")
    assert [t.get_text() for t in axes[0].texts] == ["first"]
    assert [t.get_text() for t in axes[2].texts] == ["second"]
    plain = plots.image_grid(torch.rand(2, 1, 5, 5), ["a", "b"])  # the old call still works
    assert plain.axes[0].title.get_text() == "a"


def _legend_right_of_axes(fig, ax):
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent()
    return box.x0 >= ax.get_window_extent().x1


def test_legends_sit_outside_the_data():
    fig = plots.per_class_bars({"x": [0.9, 0.8], "y": [0.5, 0.4]}, ["c0", "c1"], title="t")
    assert _legend_right_of_axes(fig, fig.axes[0])
    fig = plots.eps_curves({"m": [1.0, 0.5, 0.1]}, [0, 0.1, 0.2], mark=0.1)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "m" in labels and any("eps" in t for t in labels)
    assert _legend_right_of_axes(fig, fig.axes[0])


def test_training_curves_titles_ylabels_and_marks_legend():
    h = {"run": [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]}
    fig = plots.training_curves(h, ("loss",), marks=[1.5], titles={"loss": "Training loss"},
                                ylabels={"loss": "cross-entropy"}, marks_label="lr decay")
    ax = fig.axes[0]
    assert ax.get_title() == "Training loss" and ax.get_ylabel() == "cross-entropy"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run", "lr decay"]
