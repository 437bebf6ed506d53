"""The progress bar: its slow-encode note (timed after the first report, so start-up costs do not
inflate it) and its count across stages and banks."""
from ddcodec import FitConfig, QuantConfig
from ddcodec_cli import progress


def _run(monkeypatch, capsys, times, may_stop=False):
    clock = iter(times)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.FitProgress(FitConfig(iters=3000), QuantConfig(qat_iters=300, round_iters=0), quiet=False,
                              may_stop=may_stop) as bar:
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


def test_a_fit_that_may_stop_early_gives_its_duration_as_a_bound(monkeypatch, capsys):
    # a denoising fit's discrepancy stop may end it long before its budget
    times = [1.0 * i for i in range(1, 7)]
    err = _run(monkeypatch, capsys, times, may_stop=True)
    assert "note: this encode will take up to about 6 min" in err


def test_a_fit_that_stops_early_gives_its_unused_iterations_back():
    # the discrepancy stop ends a denoising fit at 520 of its 2,000 cap; the distillation's
    # iterations follow on from 520, not from 2,000, and the total shrinks to match
    bar = progress.FitProgress(FitConfig(iters=2000), QuantConfig(qat_iters=300, round_iters=0), quiet=True)  # as ddc denoise
    for it in range(10, 530, 10):
        bar.update("fit", it, 2000, 0.01, 20.0)
    bar.update("distil", 10, 300, 0.01, 20.0)
    assert bar.done == 530
    assert bar.total == 520 + 300
    bar.update("distil", 300, 300, 0.01, 20.0)
    assert bar.done == bar.total


def test_banks_that_run_in_full_count_every_iteration():
    # the learned rounding's steps too: a third of the fit's by default
    bar = progress.FitProgress(FitConfig(iters=100), QuantConfig(qat_iters=20), quiet=True, banks=2)
    assert bar.total == 2 * (100 + 20 + 33)
    for _ in range(2):
        bar.update("fit", 100, 100, 0.01, 20.0)
        bar.update("qat", 20, 20, 0.01, 20.0)
        bar.update("round", 33, 33, 0.01, 20.0)
        bar.next_bank()
    assert bar.offset == bar.total == 306


def test_stages_of_one_name_back_to_back_count_on():
    # the tiles' pilot fits (one per tile size), or fits with no fine-tuning between them,
    # report one stage name twice in a row: the second's count starts again and must add on
    bar = progress.FitProgress(FitConfig(iters=20), QuantConfig(qat_iters=0), quiet=True)
    seen = []
    for _ in range(3):
        for it in (10, 20):
            bar.update("fit", it, 20, 0.01, 20.0)
            seen.append(bar.done)
    assert seen == [10, 20, 30, 40, 50, 60]
