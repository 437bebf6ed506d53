"""The slow-encode note: timed after the first report, so start-up costs do not inflate it."""
from ddcodec import FitConfig, QuantConfig
from ddcodec_cli import progress


def _run(monkeypatch, capsys, times):
    clock = iter(times)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.FitProgress(FitConfig(iters=3000), QuantConfig(qat_iters=300), quiet=False) as bar:
        for it in (10, 20, 30, 40, 50, 60):
            bar.update("fit", it, 3000, 0.01, 20.0)
    return capsys.readouterr().err


def test_a_slow_start_alone_gives_no_note(monkeypatch, capsys):
    # 10 s for the first 10 iterations, then 10 ms each: about 40 s in all, under a minute
    times = [10.0] + [10.0 + 0.1 * i for i in range(1, 6)]  # the clock at each report
    assert "note:" not in _run(monkeypatch, capsys, times)


def test_a_slow_fit_gets_a_note_with_its_duration(monkeypatch, capsys):
    times = [1.0 * i for i in range(1, 7)]  # 0.1 s per iteration: ~6 min
    err = _run(monkeypatch, capsys, times)
    assert "note: this encode will take about 6 min" in err
