"""The parallel runner's plan: who waits for whom, and what starts first.  (Running it is
tested end to end by tests/test_pipeline.py, which drives the smoke pipeline with it.)"""
import pytest

from advlab.pipeline import parallel, stages


def test_every_stage_waits_for_the_stages_it_reads_and_the_report_for_all():
    graph = {s.name: parallel.upstream(s) for s in stages.STAGES}
    assert graph["00_baselines"] == set()
    assert graph["05_mad"] == {"00_baselines"}
    assert graph[stages.REPORT] == {s.name for s in stages.STAGES} - {stages.REPORT}
    for s in stages.STAGES:
        for r in s.reads:
            assert r.split("/")[0] in graph[s.name]


def test_critical_path_starts_the_longest_chain_first(monkeypatch):
    monkeypatch.setattr(parallel, "WEIGHT", {"a": 1, "b": 10, "c": 3, "d": 1})
    graph = {"a": set(), "b": {"a"}, "c": set(), "d": {"b", "c"}}
    cp = parallel.critical_path(graph)
    assert cp == {"a": 12, "b": 11, "c": 4, "d": 1}
    assert sorted(graph, key=lambda n: -cp[n])[0] == "a"  # a gates the heavy b


def test_bad_arguments_are_refused_with_the_known_names(capsys):
    with pytest.raises(SystemExit):
        parallel.main(["--jobs", "2", "07_nope"])
    assert "unknown stage(s) ['07_nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parallel.main(["--jobs", "0"])


def test_threads_env_overrides_the_notebook_and_rejects_nonsense(monkeypatch):
    import torch

    from advlab.pipeline import notebook, params

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(notebook.THREADS_ENV, "1")
        assert notebook.set_threads(2) == 1
        monkeypatch.setenv(notebook.THREADS_ENV, "zero")
        with pytest.raises(params.ParamsError, match="ADVLAB_THREADS"):
            notebook.set_threads(None)
    finally:
        torch.set_num_threads(before)
