"""The benchmark's own arithmetic: what it reports must follow from the rows it read."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import ddcodec
from benchmarks.rd import equal_rate
from ddcodec.entropy import DECAY_ONE, DECAYS


def _folder(tmp_path, names):
    """A dataset folder of flat 48x32 PNGs, one per name, each its own grey."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((32, 48, 3), 100 + i, np.uint8)).save(data / f"{name}.png")
    return data, tmp_path / "out"


def _curve(codec, image, points):
    return [dict(codec=codec, image=image, quality=q, bpp=b, psnr=p) for q, (b, p) in enumerate(points)]


def test_equal_rate_compares_each_file_with_the_baseline_at_its_own_bpp():
    by_codec = {
        "jpeg": {"a": _curve("jpeg", "a", [(0.2, 20.0), (0.6, 28.0)]),
                 "b": _curve("jpeg", "b", [(0.2, 30.0), (0.6, 34.0)])},
        "ddcodec": {"a": [dict(codec="ddcodec", image="a", quality="bpp0.5", bpp=0.4, psnr=25.0)],
                    "b": [dict(codec="ddcodec", image="b", quality="bpp0.5", bpp=0.5, psnr=31.0)]},
    }
    [row] = equal_rate(by_codec)
    assert row["images"] == ["a", "b"] and row["quality"] == "bpp0.5"
    assert row["bpp"] == pytest.approx(0.45) and row["psnr"] == pytest.approx(28.0)
    # jpeg on a at 0.4 bpp: 24.0; on b at 0.5 bpp: 33.0
    assert row["at_same_bpp"] == {"jpeg": pytest.approx(28.5)}


def test_equal_rate_leaves_out_a_baseline_that_cannot_reach_some_files_rate():
    by_codec = {
        "webp": {"a": _curve("webp", "a", [(0.3, 25.0), (0.9, 30.0)])},
        "ddcodec": {"a": [dict(codec="ddcodec", image="a", quality="bpp0.1", bpp=0.1, psnr=20.0)]},
    }
    [row] = equal_rate(by_codec)
    assert row["at_same_bpp"] == {}  # webp's lowest rate is 0.3: no figure rather than an extrapolated one
    assert not math.isnan(row["psnr"])


def test_a_summary_over_part_of_a_profile_leaves_the_profiles_files_alone(tmp_path):
    from benchmarks.rd import main

    data, out = _folder(tmp_path, ["a", "b"])
    table = out / "kodak-mini" / "table.md"
    table.parent.mkdir(parents=True)
    table.write_text("the whole profile's table\n")
    main(["--profile", "kodak-mini", "--data", str(data), "--out", str(out), "--summary-only", "--names", "a"])
    assert table.read_text() == "the whole profile's table\n"
    assert sorted(p.name for p in table.parent.iterdir()) == ["table.md"]
    main(["--profile", "kodak-mini", "--data", str(data), "--out", str(out), "--summary-only"])
    assert table.read_text() != "the whole profile's table\n"


def test_a_profile_is_its_own_subset_so_more_or_fewer_images_are_a_part_of_it(tmp_path):
    from benchmarks.rd import PROFILE_IMAGES, main

    n = PROFILE_IMAGES["kodak-half"]
    data, out = _folder(tmp_path, [f"im{i}" for i in range(n + 1)])
    table = out / "kodak-half" / "table.md"
    args = ["--profile", "kodak-half", "--data", str(data), "--out", str(out), "--summary-only"]
    for part in (["--images", str(n + 1)], ["--images", "0"], ["--images", str(n - 1)]):
        main(args + part)
        assert not table.exists(), part
    main(args + ["--images", str(n)])  # the profile's own images, named or by default
    assert table.exists()
    table.unlink()
    main(args)
    assert table.exists()


def test_an_image_name_not_in_the_folder_stops_the_run_instead_of_running_on_fewer(tmp_path):
    from benchmarks.rd import load_images

    data, _ = _folder(tmp_path, ["kodim01", "kodim02"])
    assert list(load_images(data, 1, names=["kodim02"])) == ["kodim02"]
    with pytest.raises(SystemExit, match=r"kodim1\b"):
        load_images(data, 1, names=["kodim02", "kodim1"])
    with pytest.raises(SystemExit, match="no .png"):
        load_images(tmp_path / "out", 1)


def test_a_point_only_some_images_have_stays_out_of_the_curve(tmp_path):
    from benchmarks.rd import summarise

    def row(image, quality, bpp, psnr):
        return dict(codec="ddcodec", image=image, quality=quality, bpp=bpp, psnr=psnr, ms_ssim=0.9,
                    encoding_time=1.0, decoding_time=0.1, bytes=100)
    rows = [row("a", "bpp0.5", 0.5, 28.0), row("b", "bpp0.5", 0.49, 30.0), row("a", "bpp0.25", 0.25, 24.0)]
    summary = summarise(rows, tmp_path, ["a", "b"], write=False)
    bpp, psnr, _ = summary["curves"]["ddcodec"]
    assert bpp == [pytest.approx(0.495)] and psnr == [pytest.approx(29.0)]
    assert {r["quality"]: r["images"] for r in summary["equal_rate"]} == {"bpp0.25": ["a"], "bpp0.5": ["a", "b"]}


def test_a_row_whose_encode_time_is_unknown_is_averaged_out_not_a_crash(tmp_path):
    # a resumed run finds files that an interrupted run wrote but never scored: no encode time
    from benchmarks.rd import summarise

    def row(image, seconds):
        return dict(codec="ddcodec", image=image, quality="bpp0.5", bpp=0.5, psnr=28.0, ms_ssim=0.9,
                    encoding_time=seconds, decoding_time=0.1, bytes=100)
    summarise([row("a", None), row("b", 3.0)], tmp_path, ["a", "b"])
    import json
    results = json.loads((tmp_path / "ddcodec.json").read_text())["results"]
    assert results["encoding_time"] == [3.0] and results["psnr-rgb"] == [28.0]
    (tmp_path / "alone").mkdir()
    summarise([row("a", None)], tmp_path / "alone", ["a"])
    assert json.loads((tmp_path / "alone" / "ddcodec.json").read_text())["results"]["encoding_time"] == [None]


def test_the_summary_files_are_strict_json_with_points_in_quality_order(tmp_path):
    import json

    from benchmarks.rd import summarise

    def row(codec, quality, bpp, psnr):
        return dict(codec=codec, image="a", quality=quality, bpp=bpp, psnr=psnr, ms_ssim=0.9,
                    encoding_time=1.0, decoding_time=0.1, bytes=100)
    qualities = [1, 3, 10, 30]  # as text, "10" would sort before "3"
    rows = [row("jpeg", q, 0.1 * (i + 1), 20.0 + i) for i, q in enumerate(qualities)]
    rows.append(row("ddcodec", "bpp0.5", 0.5, 25.0))  # one point: no BD-rate (NaN) against jpeg
    summarise(rows, tmp_path, ["a"])
    for f in tmp_path.glob("*.json"):
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name} holds {c}"))
    jpeg = json.loads((tmp_path / "jpeg.json").read_text())
    assert jpeg["results"]["bpp"] == sorted(jpeg["results"]["bpp"])
    assert json.loads((tmp_path / "bd_rate.json").read_text())["jpeg"]["ddcodec"] is None


def test_the_dataset_run_takes_the_fastest_bank_row_within_the_tolerance_of_fp32():
    from benchmarks.speed import QUALITY_TOLERANCE_DB, fastest_faithful

    def row(prec, comp, bank, ms, psnr):
        return dict(precision=prec, compile=comp, bank=bank, ms_per_image_iter=ms, psnr=psnr)

    ref = row("fp32", False, 24, 2.4, 30.0)
    close = row("tf32", False, 24, 1.6, 30.0 - QUALITY_TOLERANCE_DB / 2)
    lossy = row("bf16", False, 24, 1.0, 30.0 - 2 * QUALITY_TOLERANCE_DB)
    single = row("tf32", True, 1, 0.5, 30.0)  # faster, but not a bank
    assert fastest_faithful([ref, close, lossy, single]) is close
    assert fastest_faithful([close, lossy]) == {"precision": "fp32", "compile": False}  # no reference
    # among single images: the fastest within the tolerance of fp32 for one image
    one_ref, one_lossy = row("fp32", False, 1, 9.0, 25.0), row("bf16", True, 1, 0.4, 25.0 - 2 * QUALITY_TOLERANCE_DB)
    assert fastest_faithful([ref, close, one_ref, one_lossy, single], banked=False) is single


def test_speed_rows_on_file_are_reused_only_for_the_same_device_and_counts(tmp_path):
    import json

    from benchmarks.speed import _on_file

    (tmp_path / "speed_gpu.json").write_text(json.dumps(dict(device="H200", timed_iters=100, quality_iters=300, rows=[])))
    assert _on_file(tmp_path, "gpu", "H200", (100, 300, 1))["device"] == "H200"  # a file without rounds timed one
    assert _on_file(tmp_path, "gpu", "H200", None) is not None  # the dataset parts read any counts
    assert _on_file(tmp_path, "gpu", "H100", None) is None
    assert _on_file(tmp_path, "gpu", "H200", (200, 300, 1)) is None
    assert _on_file(tmp_path, "gpu", "H200", (100, 300, 5)) is None  # best of 5 is not comparable with one
    assert _on_file(tmp_path, "cpu", "H200", None) is None


def test_cpu_rows_on_file_are_reused_only_at_the_same_thread_count(tmp_path, monkeypatch):
    import json

    from benchmarks.speed import _on_file
    (tmp_path / "speed_cpu.json").write_text(json.dumps(dict(device="cpu", threads=2, timed_iters=100, quality_iters=300)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert _on_file(tmp_path, "cpu", "cpu", (100, 300, 1)) is not None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a one-thread run must not resume two-thread rows
    assert _on_file(tmp_path, "cpu", "cpu", (100, 300, 1)) is None


def test_a_speed_configuration_that_fails_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    import json

    import torch

    import benchmarks.speed as speed

    def broken_compile(fn, **kw):
        def run(*a):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("ddcodec.compiling._PROGRAMS", {})  # not a program compiled by an earlier test
    monkeypatch.setattr(speed, "CPU_CONFIGS", [("tiny compiled", 1, "fp32", True, 1, 4),
                                               ("tiny eager", 1, "fp32", False, 1, 4)])
    data, out = _folder(tmp_path, ["a"])
    with pytest.warns(UserWarning, match="torch.compile failed"):
        speed.main(["--data", str(data), "--device", "cpu", "--iters", "2", "--warmup", "1", "--quality-iters", "2", "--out", str(out)])
    result = json.loads((out / "speed_cpu.json").read_text())
    assert [r["config"] for r in result["rows"]] == ["tiny eager"]  # not an eager run labelled compiled
    assert "fell back to eager" in result["failed"]["tiny compiled"]
    assert "tiny compiled | failed" in (out / "speed_cpu.md").read_text()


def test_a_speed_configuration_that_raises_what_is_not_a_runtime_error_is_reported_too(tmp_path, monkeypatch):
    import json

    import benchmarks.speed as speed

    class OutOfResources(Exception):  # Triton's own, which derives from Exception alone
        pass

    real = speed.measure

    def measure(imgs, k, precision, compile_, *rest, **kw):
        if k == 5:
            raise OutOfResources("out of resource: shared memory, Required: 295680")
        return real(imgs, k, precision, compile_, *rest, **kw)

    monkeypatch.setattr(speed, "measure", measure)
    monkeypatch.setattr(speed, "CPU_CONFIGS", [("tiny broken", 1, "fp32", False, 1, 5), ("tiny eager", 1, "fp32", False, 1, 4)])
    data, out = _folder(tmp_path, ["a"])
    speed.main(["--data", str(data), "--device", "cpu", "--iters", "2", "--warmup", "1", "--quality-iters", "2", "--out", str(out)])
    result = json.loads((out / "speed_cpu.json").read_text())
    assert [r["config"] for r in result["rows"]] == ["tiny eager"]
    assert "shared memory" in result["failed"]["tiny broken"]


def test_a_resumed_speed_run_measures_again_only_the_rechecked_rows_of_an_older_program():
    from benchmarks.speed import PROGRAM, RECHECK, _stale

    name, muon = RECHECK[0], dict(optimizer="muon", margin=True)
    assert _stale(dict(config=name, compile=True, **muon))  # on file from before the shared program
    assert not _stale(dict(config=name, compile=True, program=PROGRAM, **muon))  # measured with it
    assert not _stale(dict(config="bf16+fused B=24", compile="fused", **muon))  # not rechecked: kept
    assert not _stale(dict(config=name, compile=False, **muon))  # eager rows have no compiled program


def test_a_resumed_speed_run_measures_again_the_rows_that_timed_adams_steps():
    from benchmarks.speed import PROGRAM, TF32_BACKWARD, _stale, _stale_reasons

    fresh = dict(config="bf16+fused B=24", precision="bf16", compile="fused", program=PROGRAM, **{TF32_BACKWARD: True})
    assert not _stale(dict(fresh, optimizer="muon", margin=True))
    assert _stale_reasons(dict(fresh, margin=True)) == _stale_reasons(dict(fresh, optimizer="adam", margin=True)) == ["Adam's steps"]


def test_a_resumed_speed_run_measures_again_the_rows_fitted_without_the_margin():
    from benchmarks.speed import PROGRAM, TF32_BACKWARD, _stale_reasons

    fresh = dict(config="bf16+fused B=24", precision="bf16", compile="fused", program=PROGRAM, optimizer="muon",
                 **{TF32_BACKWARD: True})
    assert _stale_reasons(fresh) == ["the canvas without a margin"]  # rows before the forty-third stop
    assert _stale_reasons(dict(fresh, margin=True)) == []


def test_a_resumed_speed_run_measures_the_stale_fastest_single_image_right_after_the_first_three_new_rows():
    from benchmarks.speed import FIRST, GPU_CONFIGS, _stale, _to_measure

    names = [c[0] for c in GPU_CONFIGS]
    on_file = [dict(config=n, precision=c[2], compile=c[3]) for n, c in zip(names, GPU_CONFIGS) if n not in names[:5]]
    todo = [c[0] for c in _to_measure(GPU_CONFIGS, on_file)]
    stale = [r["config"] for r in on_file if _stale(r)]  # the tf32 rows (their backward ran in fp32), RECHECK
    assert FIRST[0] in stale
    assert todo == names[:3] + [FIRST[0]] + names[3:5] + [n for n in stale if n != FIRST[0]]


def test_a_resumed_speed_run_measures_again_the_tf32_rows_whose_backward_ran_in_fp32():
    from benchmarks.speed import PROGRAM, TF32_BACKWARD, _stale

    muon = dict(optimizer="muon", margin=True)  # rows of the recipe's optimiser and canvas: only the backward can make them stale
    assert _stale(dict(config="tf32 B=24", precision="tf32", compile=False, **muon))
    assert _stale(dict(config="tf32+graphs B=1", precision="tf32", compile="reduce-overhead", program=PROGRAM, **muon))
    assert not _stale(dict(config="tf32 B=24", precision="tf32", compile=False, **muon, **{TF32_BACKWARD: True}))
    assert not _stale(dict(config="bf16 B=24", precision="bf16", compile=False, **muon))  # autocast's backward was bf16


def test_a_resumed_speed_run_measures_the_rows_never_measured_before_the_stale_ones():
    from benchmarks.speed import GPU_CONFIGS, PROGRAM, RECHECK, _to_measure

    muon = dict(optimizer="muon", margin=True)
    stale = [dict(config=name, compile=True, **muon) for name in RECHECK]  # on file, older program
    fresh = dict(config=GPU_CONFIGS[0][0], compile=False, **muon)  # on file, kept
    rechecked = dict(config=GPU_CONFIGS[1][0], compile=True, program=PROGRAM, **muon)
    todo = [c[0] for c in _to_measure(GPU_CONFIGS, stale + [fresh, rechecked])]
    never = [c[0] for c in GPU_CONFIGS if c[0] not in RECHECK + (fresh["config"], rechecked["config"])]
    assert todo == never + [c[0] for c in GPU_CONFIGS if c[0] in RECHECK]
    assert [c[0] for c in _to_measure(GPU_CONFIGS, [])] == [c[0] for c in GPU_CONFIGS]


def test_the_fine_tuning_comparison_quantizes_one_fit_and_never_loses_to_no_fine_tuning():
    from benchmarks.qat import compare

    gen = np.random.default_rng(0)
    images = [gen.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(2)]
    row = compare(images, 4, 2.0, settings=[(0, 1e-4, 0), (20, 0.002, 0), (20, 1e-4, 0), (20, 1e-4, None)],
                  fit=ddcodec.FitConfig(iters=30), layers=3)
    assert [s["round_iters"] for s in row["settings"]] == [0, 0, 0, 10]  # None: a third of the fit
    none, *tuned = row["settings"]
    for s in row["settings"]:
        assert len(s["psnr"]) == 2 and s["mean_bpp"] <= 2.0  # every setting within the rate
    # the fine-tuning keeps its best rounded iterate, the start included: it cannot lose
    # more than the decoder's last level of rounding
    assert all(s["mean_psnr"] >= none["mean_psnr"] - 0.01 for s in tuned)


def test_the_decode_timing_compares_pixels_and_puts_the_pass_rule_back(monkeypatch):
    from benchmarks.speed import decode_times
    from ddcodec import exact

    class OtherDevice:  # stands for a GPU: decode() is told "other" and runs on the CPU
        type = "cuda"

        def __str__(self):
            return "other"

    real, widths, flip = ddcodec.decode, [], []

    def decode(data, device="cpu"):  # the pass width in force for a GPU at each decode
        if device != "other":
            return real(data)
        widths.append(exact.channels_per_pass(64, 16, torch.device("cuda")))
        px = real(data).copy()
        px[0, 0, 0] ^= 1 if flip else 0
        return px

    encode = ddcodec.encode
    monkeypatch.setattr(ddcodec, "encode", lambda *a, device, **kw: encode(*a, device="cpu", **kw))
    monkeypatch.setattr(ddcodec, "decode", decode)
    rule = exact.channels_per_pass
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    d = decode_times(img, OtherDevice(), reps=2)
    assert exact.channels_per_pass is rule
    assert widths == [64, 64, 8, 8]  # whole blocks, then passes of 8
    assert d["same_pixels"] is True and d["size"] == "48x32" and d["bytes"] > 0
    assert min(d["cpu_s"], d["cuda_s"], d["cuda_s_passes_of_8"]) > 0
    flip.append(True)
    assert decode_times(img, OtherDevice(), reps=1)["same_pixels"] is False
    assert "cuda_s" not in decode_times(img, torch.device("cpu"), reps=1)


def test_the_adam_comparison_times_both_forms_each_round_and_restores_the_fits_own(tmp_path, monkeypatch):
    import json

    from benchmarks import adam
    from ddcodec import fit

    monkeypatch.setattr(adam, "CONFIGS", [("tiny", 2, 1, 4, False)])
    data, out = _folder(tmp_path, ["a", "b"])
    own = fit.adam
    adam.main(["--data", str(data), "--rounds", "2", "--steps", "2", "--out", str(out)])
    assert fit.adam is own
    row = json.loads((out / "adam_cpu.json").read_text())["rows"][0]
    assert row["config"] == "tiny" and sorted(row["ms_per_step"]) == ["fused", "plain"]
    assert all(len(t) == 2 and min(t) > 0 for t in row["ms_per_step"].values())
    assert len(row["ratio_per_round"]) == 2


def test_every_timed_form_of_a_conv_weight_gradient_computes_the_same_product():
    from benchmarks import products

    for bank, c in ((1, 8), (3, 8), (3, 3)):  # a k x k block and a 3 x k output conv
        forms = products._forms(bank, 8, c, 96, (4, 32), torch.float64, torch.device("cpu"))
        grads = {name: fn() for name, (fn, _) in forms.items() if "weight grad" in name}
        assert len(grads) == 3 + (bank == 1)  # bmm, (mm,) and both splits were timed
        ref = grads.pop(next(n for n in grads if n.endswith("weight grad, bmm")))
        assert ref.shape == (bank, c, 8)
        for name, g in grads.items():
            g = g if g.dim() == 3 else g[None]
            assert torch.allclose(g, ref, rtol=1e-10, atol=1e-10), name


def test_the_products_timing_reports_each_form_against_the_copy_floor():
    from benchmarks import products

    case = dict(k=8, pixels=(64,), banks=(2,), splits=(4,))
    rows = products.times(torch.device("cpu"), "fp32", copy_gbs=10.0, case=case, reps=2)
    assert {r["form"] for r in rows} == {f"{w} {f}" for w in ("block", "output-conv")
                                         for f in ("forward, bmm", "weight grad, bmm", "weight grad, channels last, 4 splits")}
    for r in rows:  # x_floor is the time over the bytes' time at the given bandwidth
        c = 8 if r["form"].startswith("block") else 3
        floor_ms = 2 * (c + 8) * 64 * 4 / 10e9 * 1e3
        assert math.isclose(r["x_floor"], r["ms"] / floor_ms, rel_tol=1e-9)
    assert "| block weight grad, bmm | 2 | 64 | fp32 |" in products.table(rows)


def test_a_speed_row_keeps_the_fastest_of_its_timing_rounds(monkeypatch):
    from types import SimpleNamespace

    import benchmarks.speed as speed

    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # rounds of 3 s, 1 s and 2 s
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(speed, "optimise", lambda *a, **kw: torch.full((2,), 0.01))
    imgs = [np.zeros((16, 24, 3), np.uint8)] * 2
    r = speed.measure(imgs, 4, "fp32", False, torch.device("cpu"), iters=10, warmup=1, quality_iters=1, rounds=3)
    assert r["ms_per_image_iter"] == 1.0 / 10 / 2 * 1000  # the 1 s round, per step and per image
    assert next(clock, None) is None  # all three rounds were timed


def test_a_speed_rows_psnr_is_its_weights_scored_in_fp32_not_the_loops_own_loss(monkeypatch):
    # a bf16 or TF32 loop scores its iterates in its own precision; the row's PSNR, held
    # against the fp32 row's, must be of the weights, scored as that row's are
    import benchmarks.speed as speed
    from ddcodec.fit import psnr_from_mse
    seen = {}

    def flattering(model, z, loss, *a, **kw):  # a loop that reports a loss its weights do not have
        seen.update(model=model, z=z, loss=loss)
        return torch.full((z.shape[0],), 1e-9)
    monkeypatch.setattr(speed, "optimise", flattering)
    imgs = [np.full((16, 24, 3), 100, np.uint8)] * 2
    r = speed.measure(imgs, 4, "fp32", False, torch.device("cpu"), iters=1, warmup=1, quality_iters=1)
    with torch.no_grad():
        expected = float(psnr_from_mse(seen["loss"](seen["model"](seen["z"]))).mean())
    assert r["psnr"] == pytest.approx(expected) and r["psnr"] < 80  # not the 90 dB the loop claimed


def test_alternated_forms_are_each_timed_once_a_round_in_turn_inside_their_own_context(monkeypatch):
    from contextlib import contextmanager

    from benchmarks import alternate
    from ddcodec import fit

    calls, entered = [], []

    def fake_optimise(model, z, loss, steps, lr, **kw):
        calls.append((model, steps, kw["compile"]))

    @contextmanager
    def around(name):
        entered.append(name)
        yield

    monkeypatch.setattr(fit, "optimise", fake_optimise)
    forms = {n: ((None, None, None, None, n), {"compile": c}, lambda n=n: around(n)) for n, c in (("a", True), ("b", False))}
    times = alternate.alternate(forms, torch.device("cpu"), rounds=2, steps=7)
    assert calls == [("a", 3, True), ("b", 3, False)] + [("a", 7, True), ("b", 7, False)] * 2  # warm-up, then rounds
    assert entered == ["a", "b"] * 3
    assert {n: len(t) for n, t in times.items()} == {"a": 2, "b": 2}
    s = alternate.summary({"a": [2.0, 4.0, 9.0], "b": [1.0, 2.0, 3.0]}, "b")
    assert s["median_ms"] == {"a": 4.0, "b": 2.0} and s["ratio_per_round"] == {"a": [2.0, 2.0, 3.0]}


def test_the_presets_comparison_writes_every_forms_rounds(tmp_path, monkeypatch):
    import json

    from benchmarks import alternate

    monkeypatch.setattr(alternate, "CONFIGS", [("tiny", 2, 1, 4, 50)])
    monkeypatch.setattr(alternate, "PRESETS", {"default": False, "eager": False})  # no compiler needed
    data, out = _folder(tmp_path, ["a", "b"])
    alternate.main(["--data", str(data), "--rounds", "2", "--steps", "2", "--out", str(out)])
    row = json.loads((out / "presets_cpu.json").read_text())["rows"][0]
    assert row["config"] == "tiny" and sorted(row["ms_per_step"]) == ["default", "eager"]
    assert all(len(t) == 2 and min(t) > 0 for t in row["ms_per_step"].values())
    assert list(row["ratio_per_round"]) == ["eager"] and len(row["ratio_per_round"]["eager"]) == 2


def test_the_adam_quality_comparison_fits_with_the_form_it_names(tmp_path, monkeypatch):
    import json

    from benchmarks import adam, adam_quality
    from ddcodec import fit

    used = []
    real_optimise = adam_quality.optimise

    def recording(*a, **kw):
        used.append(fit.adam)
        assert kw["optimizer"] == "adam"  # Adam for every tensor: Muon would step the matrices without it
        return real_optimise(*a, **kw)
    monkeypatch.setattr(adam_quality, "optimise", recording)
    monkeypatch.setattr(fit, "adam", fit.adam)  # put back after the plain run replaces it
    monkeypatch.setattr(adam_quality, "FitConfig", lambda: ddcodec.FitConfig(iters=3))
    data, out = _folder(tmp_path, ["a", "b"])
    own = fit.adam
    adam_quality.main(["--form", "fused", "--names", "a,b", "-k", "4", "--downscale", "1", "--data", str(data), "--out", str(out)])
    adam_quality.main(["--form", "plain", "--names", "a,b", "-k", "4", "--downscale", "1", "--data", str(data), "--out", str(out)])
    assert used == [own, adam.plain_adam]
    rows = [json.loads(line) for line in (out / "adam_quality_cpu.jsonl").read_text().splitlines()]
    assert [r["form"] for r in rows] == ["fused", "plain"] and all(sorted(r["psnr"]) == ["a", "b"] for r in rows)


def test_the_adam_quality_summary_pairs_each_images_latest_fits_per_k():
    from benchmarks.adam_quality import summary

    row = lambda form, k, psnr: {"form": form, "k": k, "downscale": 4, "threads": 1, "psnr": psnr}  # noqa: E731
    rows = [row("fused", 8, {"a": 20.0, "b": 21.0}), row("plain", 8, {"a": 20.5, "b": 20.0}),
            row("fused", 8, {"a": 21.0}),  # a rerun of a: replaces 20.0
            row("fused", 16, {"a": 25.0, "c": 26.0}), row("plain", 16, {"a": 25.25})]  # c has no pair
    s = summary(rows)
    assert sorted(s) == [(8, 4, 1), (16, 4, 1)]
    assert s[(8, 4, 1)]["images"] == 2 and s[(8, 4, 1)]["mean"] == 0.75 and s[(8, 4, 1)]["fused_lower"] == 0
    assert (s[(8, 4, 1)]["min"], s[(8, 4, 1)]["max"]) == (0.5, 1.0)
    assert s[(16, 4, 1)]["images"] == 1 and s[(16, 4, 1)]["mean"] == -0.25 and s[(16, 4, 1)]["fused_lower"] == 1
    pooled = summary(rows, pool=True)  # image a at both k: two fits, not one
    assert list(pooled) == [("all", 4, 1)] and pooled[("all", 4, 1)]["images"] == 3
    assert abs(pooled[("all", 4, 1)]["mean"] - 1.25 / 3) < 1e-12 and pooled[("all", 4, 1)]["fused_lower"] == 1


def test_the_threads_comparison_times_each_form_at_its_own_thread_count_and_restores_the_callers(tmp_path, monkeypatch):
    import json

    from benchmarks import threads
    from ddcodec import fit

    monkeypatch.setattr(threads, "CONFIGS", [("tiny", 2, 1, 4, 50)])
    monkeypatch.setattr(threads, "KINDS", {"eager": False, "compiled": False})  # no compiler needed
    seen, real = [], fit.optimise

    def recording(*args, **kw):
        seen.append(torch.get_num_threads())
        return real(*args, **kw)

    monkeypatch.setattr(fit, "optimise", recording)
    data, out = _folder(tmp_path, ["a", "b"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads.main(["--data", str(data), "--rounds", "2", "--steps", "2", "--out", str(out)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # three rounds (one untimed) of four forms, each round in the order eager 1t, 2t, compiled 1t, 2t
    assert seen == [1, 2, 1, 2] * 3
    row = json.loads((out / "threads_cpu.json").read_text())["rows"][0]
    assert sorted(row["ms_per_step"]) == ["compiled 1t", "compiled 2t", "eager 1t", "eager 2t"]
    assert all(len(t) == 2 and min(t) > 0 for t in row["ms_per_step"].values())
    for kind in ("eager", "compiled"):
        one, two = row["ms_per_step"][f"{kind} 1t"], row["ms_per_step"][f"{kind} 2t"]
        assert row["speedup_per_round"][kind] == [a / b for a, b in zip(one, two)]


def test_a_cold_run_given_a_cache_folder_compiles_into_it_and_refuses_one_already_used(tmp_path, monkeypatch):
    import os

    from benchmarks.speed import _use_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/elsewhere/triton")
    _use_cache(None, False)  # neither: the caches stay where they were
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"
    folder = tmp_path / "cache"
    _use_cache(folder, True)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder) and folder.is_dir()
    assert "TRITON_CACHE_DIR" not in os.environ  # inductor then puts Triton's beneath it
    (folder / "kernel").write_text("compiled")
    with pytest.raises(SystemExit, match="not empty"):
        _use_cache(folder, True)  # a used cache would not make a cold run
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/session-wide")  # gpu_session.sh exports one
    _use_cache(folder, False)  # the warm run after it reads the same folder, Triton's beneath it
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert "TRITON_CACHE_DIR" not in os.environ


def test_the_dataset_run_times_the_codecs_calls_per_file_and_puts_the_codec_back():
    from benchmarks import speed, speed_report

    before = {n: getattr(ddcodec.codec, n) for n in speed.CODEC_CALLS}
    rng = np.random.default_rng(0)
    images = {f"im{i}": rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for i in range(3)}
    fit = ddcodec.FitConfig(iters=2, compile=False)
    d = speed.dataset_run(images, torch.device("cpu"), 2, fit)  # banks of 2 and 1
    assert {n: c for n, (_, c) in d["calls"].items()} == {"search_steps": 2, "_write_member": 3, "decode": 3}
    assert all(t > 0 for t, _ in d["calls"].values()) and d["calls"]["search_steps"][0] < d["seconds"]
    assert {n: getattr(ddcodec.codec, n) for n in speed.CODEC_CALLS} == before
    note = speed_report._stages_note(d)
    assert "exact decode" in note and "in 3 calls" in note
    # the fit's compile setting is kept beside torch.compile's timers (one "compile" key held
    # both, the timers overwriting the setting, so an eager run's table read "+ compile")
    assert d["compile"] is False and isinstance(d["compile_seconds"], dict)
    assert "+ compile" not in speed.table({"device": "cpu", "peaks": {"fp32_tflops": 1.0, "copy_gbs": 1.0},
                                           "rows": [], "dataset": d})


def test_timed_calls_puts_the_function_back_when_it_raises():
    import json
    import types

    from benchmarks.speed import timed_calls

    def fails():
        raise ValueError("x")
    mod = types.SimpleNamespace(f=fails)
    with pytest.raises(ValueError), timed_calls(mod, ["f"]) as spent:
        mod.f()
    assert mod.f is fails and spent["f"][1] == 1


@given(st.integers(-40, 0), st.integers(0, 40), st.integers(0, len(DECAYS) - 1), st.data())
@settings(max_examples=60)
def test_column_models_laplace_bits_are_the_coders_own_table(left, right, d, data):
    # benchmarks.column_models prices every model with a closed form of the table the coder
    # builds (entropy.TensorModel.probabilities); on the file's own decay the two must agree
    from benchmarks.column_models import laplace_bits
    from ddcodec.entropy import TensorModel

    m = TensorModel(left, right, 0, int(DECAYS[d]))
    q = np.array(data.draw(st.lists(st.integers(left, right), min_size=1, max_size=30)))
    p = m.probabilities() / m.probabilities().sum()
    expected = float(-np.log2(p[q - left]).sum())
    assert laplace_bits(q, m, m.decay / DECAY_ONE) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_column_models_price_a_file_at_its_payload():
    from benchmarks.column_models import file_bits

    bits = file_bits((Path(__file__).parent / "data" / "golden-v3.ddc").read_bytes())
    # the range coder ends on whole 32-bit words: within one or two of the ideal length
    assert bits["tensor"] <= bits["payload_bits"] <= bits["tensor"] + 64


def test_column_models_save_bits_where_columns_differ_in_scale():
    from benchmarks.column_models import tensor_bits
    from ddcodec.entropy import fit_model

    rng = np.random.default_rng(0)
    q = np.rint(rng.laplace(size=(32, 8)) * np.array([0.5, 1, 2, 4, 8, 16, 32, 64])).astype(np.int64)
    own, oracle, adaptive = tensor_bits(q, fit_model(q))
    assert oracle < adaptive < own
    flat = np.rint(rng.laplace(size=(32, 8)) * 8).astype(np.int64)  # one scale: nothing to gain
    own, oracle, adaptive = tensor_bits(flat, fit_model(flat))
    assert adaptive > 0.99 * own


def test_lr_crops_take_the_centre_of_landscape_and_transposed_portrait_images():
    from benchmarks.lr import centre_crops

    land = np.arange(6 * 8 * 3, dtype=np.int64).reshape(6, 8, 3)
    crops = centre_crops({"land": land, "port": land.swapaxes(0, 1)}, 4, 2)
    assert np.array_equal(crops["land"], land[2:4, 2:6])
    assert np.array_equal(crops["port"], crops["land"])  # transposed back to landscape first
    with pytest.raises(SystemExit, match="smaller than the crop"):
        centre_crops({"small": land}, 10, 2)


def test_rd_summarises_a_folder_of_grey_and_colour_images_leaving_out_a_curve_without_shared_settings(tmp_path):
    # JPEG 2000's ratios differ between grey and colour images: no setting is common to both
    pytest.importorskip("pytorch_msssim", reason="the rd rows' MS-SSIM: the bench extra")
    from PIL import Image

    from benchmarks.rd import main
    from .conftest import small
    data, out = _folder(tmp_path, [])
    Image.fromarray(small(48, 32)).save(data / "a.png")  # texture: a flat image codes exactly, at infinite PSNR
    Image.fromarray(small(48, 32, "L")).save(data / "b.png")
    main(["--profile", "kodak", "--data", str(data), "--out", str(out), "--codecs", "jpeg2000,jpeg"])
    assert (out / "kodak" / "jpeg.json").exists() and not (out / "kodak" / "jpeg2000.json").exists()


@pytest.mark.parametrize("module, args, says", [
    ("rd", ["--codecs", "jpg"], "unknown jpg"), ("rd", ["--points", "x"], "--points"),
    ("restore", ["--tasks", "bogus"], "unknown task bogus"), ("restore", [], "no kodim24.png"),
    ("speed", ["--iters", "1"], "RGB landscape"),
])
def test_a_benchmark_run_as_a_module_says_a_bad_option_or_folder_in_one_line(tmp_path, module, args, says):
    import subprocess
    import sys

    from PIL import Image
    data, out = _folder(tmp_path, [])
    Image.fromarray(np.full((48, 32, 3), 90, np.uint8)).save(data / "portrait.png")
    p = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--data", str(data), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and says in p.stderr, p.stderr


def test_restore_scores_grey_images_in_two_dimensions_and_super_resolves_any_size(tmp_path):
    pytest.importorskip("skimage", reason="the restoration baselines: the bench extra")
    from PIL import Image
    from skimage.metrics import structural_similarity

    from benchmarks import restore as bench
    grey = np.random.default_rng(0).integers(0, 256, (30, 45), dtype=np.uint8)
    assert bench.ssim(grey, grey // 2) == pytest.approx(structural_similarity(grey, grey // 2, data_range=255))
    data, out = _folder(tmp_path, ["kodim24"])
    Image.fromarray(grey).save(data / "odd.png")  # 45x30: not a multiple of 4
    bench.main(["--profile", "kodak", "--data", str(data), "--out", str(out), "--tasks", "sr4,noise25", "--images", "0",
                "--iters", "3", "--channels", "4", "--skip-images", "0"])
    rows = bench._rows(out / "kodak" / "restore_rows.jsonl")
    assert {(r["task"], r["method"]) for r in rows} >= {("sr4", "deep-decoder"), ("sr4", "lanczos"), ("noise25", "tv")}
    assert all(r["image"] == "odd" for r in rows)


def test_the_decode_timing_runs_on_its_own(tmp_path):
    from benchmarks import speed
    data, out = _folder(tmp_path, ["a"])
    speed.main(["--data", str(data), "--device", "cpu", "--part", "decode", "--out", str(out)])
    assert "decode" in __import__("json").loads((out / "speed_cpu.json").read_text())


def test_a_speed_row_of_a_smaller_bank_than_its_name_says_so():
    from benchmarks.speed_report import _line
    row = dict(config="cpu fp32 B=4 192x128 k=16", bank=1, ms_per_image_iter=10.0, it_per_s=100.0, psnr=20.0,
               floor_ms=1.0, x_floor=10.0)
    assert "(a bank of 1)" in _line(row) and "(a bank of" not in _line(dict(row, bank=4))


def test_the_decode_part_alone_leaves_another_devices_rows_on_file(tmp_path):
    import json

    from benchmarks import speed
    from ddcodec.errors import ConfigError
    data, out = _folder(tmp_path, ["a"])
    out.mkdir()
    theirs = json.dumps({"device": "another", "threads": 99, "rows": [{"config": "x"}]})
    (out / "speed_cpu.json").write_text(theirs)
    with pytest.raises(ConfigError, match="another --out"):
        speed.main(["--data", str(data), "--device", "cpu", "--part", "decode", "--out", str(out)])
    assert (out / "speed_cpu.json").read_text() == theirs


def test_restore_takes_an_empty_skip_task_list_as_none(tmp_path):
    pytest.importorskip("skimage", reason="the restoration baselines (TV's tuning): the bench extra")
    from benchmarks import restore as bench
    data, out = _folder(tmp_path, ["kodim24", "a"])
    bench.main(["--data", str(data), "--out", str(out), "--skip-tasks", "", "--summary-only"])
    assert (out / "kodak-mini" / "restore.json").exists()


def test_an_rd_run_fits_again_a_file_its_rows_do_not_record(tmp_path, monkeypatch):
    # a leftover .ddc (an older recipe's, or a run stopped between writing and scoring) was
    # skipped as done and scored as this recipe's row, with no fit behind it
    pytest.importorskip("pytorch_msssim")  # the rows' MS-SSIM: the bench extra, which CI does not install
    import json
    import types

    import numpy as np
    from PIL import Image

    from benchmarks import rd

    img = np.asarray(Image.fromarray(np.full((16, 24, 3), 90, np.uint8)))
    src = tmp_path / "x.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "out"
    args = types.SimpleNamespace(iters=20, tile="none", optimizer="adam", margin="auto", device="cpu", bank=1, ray=None)
    stale = out / rd.ours(20, "none", "adam").replace("ddcodec", "ddc") / "bpp2.0" / "x.ddc"
    stale.parent.mkdir(parents=True)
    old = ddcodec.encode(img, 4, 3, ddcodec.FitConfig(iters=2, optimizer="adam"), ddcodec.QuantConfig(qat_iters=0),
                         device="cpu").data
    stale.write_bytes(old)
    monkeypatch.setattr(rd, "_image_files", lambda images, a, out_dir: {"x": src})
    rows = out / "rows.jsonl"
    rd.run_ddcodec({"x": img}, [2.0], args, out, rows, have=set())
    row = json.loads(rows.read_text().splitlines()[-1])
    assert row["encoding_time"] is not None and stale.read_bytes() != old


def test_an_rd_curve_is_named_by_what_differs_from_the_recipe():
    from benchmarks.rd import ours

    assert ours(3000) == ours(3000, "auto", "muon") == "ddcodec"  # muon is the recipe's: one curve, not two
    # the "-adam" rows on file predate the margin: Adam with it must not run under their name
    assert ours(3000, "auto", "adam") == "ddcodec-adam-margin"
    assert ours(3000, "auto", "adam", "off") == "ddcodec-adam-nomargin"
    assert ours(6000, "none", "adam") == "ddcodec-6000it-whole-adam-margin"
    assert ours(3000, "auto", "muon", "off") == "ddcodec-nomargin"  # the recipe before the margin
    assert ours(6000, "auto", "auto", "off") == "ddcodec-6000it-nomargin"


def test_the_edge_distance_counts_from_each_tiles_own_boundary():
    from benchmarks.edges import distance
    d = distance(4, 9, 1, 3)  # three tiles of 4x3: every column is an edge or next to one
    assert d[:, :3].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert np.array_equal(d[:, 3:6], d[:, :3]) and np.array_equal(d[:, 6:], d[:, :3])
    assert distance(9, 9, 1, 1)[4, 4] == 4  # one tile: the centre is 4 from every edge
