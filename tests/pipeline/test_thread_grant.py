"""The thread grant: a core that would idle at the pipeline's tail works for the stage left.

The runner decides (``parallel.grants``) and writes the number to the stage's
``logs/STAGE.threads``; the stage's progress bars apply it (``core.progress.regrant``)."""
import torch

from advlab.core import progress as progress_mod
from advlab.pipeline import parallel


def test_a_stage_left_alone_gets_the_idle_cores_threads():
    assert parallel.grants(["05_mad"], waiting=False, jobs=2, threads=1) == {"05_mad": 2}
    # something ready is waiting for the free slot: it starts instead, no grant
    assert parallel.grants(["05_mad"], waiting=True, jobs=2, threads=1) == {"05_mad": 1}
    # both slots busy: each keeps its own
    assert parallel.grants(["a", "b"], waiting=False, jobs=2, threads=1) == {"a": 1, "b": 1}
    # four slots, one busy: three spare threads to the one left
    assert parallel.grants(["a"], waiting=False, jobs=4, threads=1) == {"a": 4}
    assert parallel.grants(["a", "b"], waiting=False, jobs=3, threads=2) == {"a": 3, "b": 3}
    assert parallel.grants([], waiting=False, jobs=2, threads=1) == {}


def test_a_progress_bar_applies_the_grant_and_a_later_revoke(tmp_path, monkeypatch):
    grant = tmp_path / "stage.threads"
    monkeypatch.setenv(progress_mod.GRANT_ENV, str(grant))
    monkeypatch.setitem(progress_mod._seen, "checked", float("-inf"))
    monkeypatch.setitem(progress_mod._seen, "stamp", None)
    monkeypatch.setattr(progress_mod.time, "monotonic", iter(range(0, 10_000, 10)).__next__)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        parallel._grant(grant, 2)
        assert list(progress_mod.progress(range(3), disable=True)) == [0, 1, 2]
        assert torch.get_num_threads() == 2
        parallel._grant(grant, 1)        # a new stage started: give the thread back
        bar = progress_mod.progress(total=2, disable=True)
        bar.update(1)
        bar.close()
        assert torch.get_num_threads() == 1
        grant.write_text("garbage\n")    # a torn or foreign file changes nothing
        assert progress_mod.regrant(min_interval=0) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_without_the_runner_nothing_is_read(monkeypatch):
    monkeypatch.delenv(progress_mod.GRANT_ENV, raising=False)
    assert progress_mod.regrant(min_interval=0) is None
