import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import ddcodec
from ddcodec.metrics import psnr
from ddcodec_cli.main import cli

from .conftest import small

FAST = ["-k", "8", "--iters", "60", "--qat-iters", "5", "-q"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(res):
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ddc: error:")


def test_encode_json_then_decode_reaches_the_reported_psnr(tmp_path):
    Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", *FAST, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert {"bytes", "bpp", "psnr", "seconds", "device", "params"} <= out.keys()
    assert out["bytes"] == (tmp_path / "a.ddc").stat().st_size
    res = run("decode", tmp_path / "a.ddc", "-o", tmp_path / "back.png")
    assert res.exit_code == 0, res.output
    back = np.asarray(Image.open(tmp_path / "back.png"))
    assert abs(psnr(back, small(40, 24)) - out["psnr"]) <= 0.05
    # and the decoded file is as good as the float network was (less the rounding budget): the
    # reported PSNR alone is measured through the decoder and would follow a broken one
    assert psnr(back, small(40, 24)) >= out["psnr_float"] - 0.15


def test_existing_output_needs_force(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    (tmp_path / "a.ddc").write_bytes(b"keep me")
    res = run("encode", tmp_path / "a.png", *FAST)
    assert res.exit_code != 0 and "--force" in res.output
    assert (tmp_path / "a.ddc").read_bytes() == b"keep me"
    res = run("encode", tmp_path / "a.png", *FAST, "--force")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.ddc").read_bytes()[:4] == b"\x89DDC"


def test_decode_never_overwrites_its_input(tmp_path, ddc_bytes):
    # named .png, so that the output's name passes the image-suffix check and only the
    # input check stands between --force and the input (as "x.ddc" it was refused by its suffix)
    f = tmp_path / "x.png"
    f.write_bytes(ddc_bytes)
    r = run("decode", f, "-o", f, "--force")
    _one_line_error(r)
    assert "overwrite the input" in r.output
    assert f.read_bytes() == ddc_bytes


def test_corrupted_file_is_one_line_error_and_no_output(tmp_path, ddc_bytes):
    f = tmp_path / "bad.ddc"
    f.write_bytes(ddc_bytes[:-1] + bytes([ddc_bytes[-1] ^ 1]))
    _one_line_error(run("decode", f))
    assert not (tmp_path / "bad.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ddc"]


def test_not_a_ddc_file_and_missing_file_are_one_line_errors(tmp_path):
    f = tmp_path / "x.ddc"
    f.write_bytes(b"hello world, not a codec file")
    for cmd in ("decode", "info"):  # each names the file it could not read
        res = run(cmd, f)
        _one_line_error(res)
        assert f"{f}: not a DDC file" in res.output, cmd
    for cmd in ("decode", "info"):
        res = run(cmd, tmp_path / "missing.ddc")
        _one_line_error(res)
        assert "missing.ddc" in res.output and "No such file" in res.output, cmd


def test_unreadable_image_is_one_line_error(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _one_line_error(run("encode", f, *FAST))
    assert not (tmp_path / "x.ddc").exists()


def test_info_shows_the_header(tmp_path, ddc_bytes):
    f = tmp_path / "x.ddc"
    f.write_bytes(ddc_bytes)
    res = run("info", f, "--json")
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert (d["width"], d["height"], d["channels"]) == (48, 32, 3)
    assert d["arch"]["channels"] == 8 and d["bytes"] == len(ddc_bytes)
    assert d == ddcodec.info(ddc_bytes)


def test_version_and_help():
    assert run("--version").output.strip() == f"ddc, version {ddcodec.__version__}"
    res = run("encode", "--help")
    assert res.exit_code == 0 and "--channels" in res.output
    assert "[default: 64; 128 for --denoise" in " ".join(res.output.split())
    for command, k, iters in (("denoise", "128", "from the estimated noise level"), ("inpaint", "128", "3000"),
                              ("encode-dir", "64; 128 for skip", None)):
        out = " ".join(run(command, "--help").output.split())  # the help wraps its lines
        assert f"[default: {k}" in out, (command, out)
        if iters:
            assert f"Fitting iterations. [default: {iters}]" in out, (command, out)


def test_bare_ddc_and_bare_bench_print_the_help_not_an_error():
    for args in ([], ["bench"]):
        res = run(*args)
        assert res.exit_code == 2 and "ddc: error" not in res.output
        assert res.output.startswith("Usage: ") and "Commands:" in res.output


def test_bad_option_value_is_one_line_error(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    _one_line_error(run("encode", tmp_path / "a.png", "-k", "0", "-q"))


def test_several_images_encode_in_banks_and_a_bad_file_is_skipped(tmp_path, monkeypatch):
    for name, (w, h) in {"a": (40, 24), "b": (24, 40), "c": (32, 32)}.items():
        Image.fromarray(small(w, h)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    banks, real = [], ddcodec.encode_bank

    def recording(images, *args, **kw):
        banks.append(sorted(im.shape for im in images))
        return real(images, *args, **kw)
    monkeypatch.setattr(ddcodec, "encode_bank", recording)
    res = run("encode", tmp_path, "-o", tmp_path / "out", *FAST, "--json")
    # the landscape and the portrait image of one size were fitted as one bank, the square alone
    assert sorted(banks) == [[(24, 40, 3), (40, 24, 3)], [(32, 32, 3)]]
    assert res.exit_code == 1  # one failure is reported in the exit code...
    skipped = [line for line in res.output.splitlines() if "skipped" in line]
    bad = tmp_path / "bad.png"
    assert skipped == [skipped[0]] and skipped[0].startswith(f"ddc: skipped {bad}: cannot read image")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a.ddc", "b.ddc", "c.ddc"]  # ...but the others are all written
    for n in "abc":
        img = ddcodec.decode((tmp_path / "out" / f"{n}.ddc").read_bytes())
        assert img.shape == np.asarray(Image.open(tmp_path / f"{n}.png")).shape


def test_restoration_commands_write_restored_images(tmp_path):
    img = small(32, 24)
    Image.fromarray(img).save(tmp_path / "x.png")
    mask = np.full(img.shape[:2], 255, np.uint8)
    mask[8:16, 8:16] = 0
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(small(8, 6)).save(tmp_path / "s.png")
    opts = ["-k", "8", "--iters", "20", "-q"]
    assert run("denoise", tmp_path / "x.png", *opts).exit_code == 0
    assert run("inpaint", tmp_path / "x.png", "--mask", tmp_path / "m.png", *opts,
               "--ddc", tmp_path / "i.ddc").exit_code == 0
    assert run("superres", tmp_path / "s.png", "--scale", "4", *opts).exit_code == 0
    # the files are the library's restorations (test_restore checks those against the truth)
    from ddcodec import restore
    denoised = np.asarray(Image.open(tmp_path / "x.denoised.png"))
    assert np.array_equal(denoised, restore.denoise(img, channels=8, iters=20, device="cpu").image)
    assert not np.array_equal(denoised, img)
    inpainted = np.asarray(Image.open(tmp_path / "x.inpainted.png"))
    network = ddcodec.decode((tmp_path / "i.ddc").read_bytes())
    known = mask >= 128
    assert np.array_equal(inpainted[known], img[known])  # known pixels are kept as they were
    assert np.array_equal(inpainted[~known], network[~known])  # the rest is the network's fill
    superres = np.asarray(Image.open(tmp_path / "s.superres.png"))
    assert superres.shape == (24, 32, 3)
    assert np.array_equal(superres, restore.superres(small(8, 6), 4, channels=8, iters=20, device="cpu").image)


def test_encode_with_scale_decodes_at_the_higher_resolution(tmp_path):
    Image.fromarray(small(12, 8)).save(tmp_path / "s.png")
    assert run("encode", tmp_path / "s.png", "--scale", "2", *FAST).exit_code == 0
    assert ddcodec.decode((tmp_path / "s.ddc").read_bytes()).shape == (16, 24, 3)


def test_mask_of_another_size_is_one_line_error(tmp_path):
    Image.fromarray(small(32, 24)).save(tmp_path / "x.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "m.png")
    _one_line_error(run("inpaint", tmp_path / "x.png", "--mask", tmp_path / "m.png", "-k", "4", "-q"))


def test_unwritable_output_is_one_line_error(tmp_path, ddc_bytes):
    f = tmp_path / "x.ddc"
    f.write_bytes(ddc_bytes)
    _one_line_error(run("decode", f, "-o", tmp_path / "no" / "such" / "dir" / "x.png"))


def test_existing_output_is_a_one_line_error(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    (tmp_path / "a.ddc").write_bytes(b"x")
    _one_line_error(run("encode", tmp_path / "a.png", *FAST))


def test_decode_default_name_does_not_collide_with_the_original(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    original = (tmp_path / "a.png").read_bytes()
    assert run("encode", tmp_path / "a.png", *FAST).exit_code == 0
    res = run("decode", tmp_path / "a.ddc")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.png").read_bytes() == original
    assert (tmp_path / "a.decoded.png").exists()


def test_decode_quiet_prints_nothing_and_still_writes_the_image(tmp_path, ddc_bytes):
    (tmp_path / "x.ddc").write_bytes(ddc_bytes)
    loud = run("decode", tmp_path / "x.ddc", "-o", tmp_path / "loud.png")
    quiet = run("decode", tmp_path / "x.ddc", "-o", tmp_path / "quiet.png", "-q")
    assert loud.exit_code == quiet.exit_code == 0, quiet.output
    assert "loud.png" in loud.output and quiet.output == ""
    assert (tmp_path / "quiet.png").read_bytes() == (tmp_path / "loud.png").read_bytes()


def test_encode_with_a_bpp_target_picks_k_and_stays_within_it(tmp_path):
    Image.fromarray(small(64, 48)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", "--bpp", "2.0", "--layers", "4", "--iters", "60",
              "--qat-iters", "5", "-q", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["bpp"] <= 2.0 and out["arch"]["channels"] > 1
    assert 8 * (tmp_path / "a.ddc").stat().st_size / (64 * 48) == out["bpp"]  # from the real file


def test_encode_denoise_file_decodes_to_what_ddc_denoise_writes(tmp_path):
    clean = small(96, 64)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "n.png")
    opts = ["-k", "32", "--layers", "4", "--iters", "300", "-q"]
    assert run("denoise", tmp_path / "n.png", *opts).exit_code == 0
    assert run("encode", tmp_path / "n.png", "--denoise", "--qat-iters", "20", *opts).exit_code == 0
    denoised = np.asarray(Image.open(tmp_path / "n.denoised.png"))
    decoded = ddcodec.decode((tmp_path / "n.ddc").read_bytes())
    assert psnr(decoded, denoised) >= 30  # the file holds the averaged, distilled result
    assert psnr(decoded, clean) > psnr(noisy, clean) + 3


def test_denoise_with_mask_or_scale_is_refused(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    _one_line_error(run("encode", tmp_path / "a.png", "--denoise", "--scale", "2", "-q"))


def test_encode_with_a_bpp_target_tiles_a_large_image_and_decode_puts_it_back(tmp_path):
    Image.fromarray(small(96, 64)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", "--bpp", "2.0", "--tile", "48x32", "--layers", "4",
              "--iters", "30", "--qat-iters", "5", "-q", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    data = (tmp_path / "a.ddc").read_bytes()
    assert data[4] == ddcodec.tiles.VERSION and out["bpp"] <= 2.0
    assert run("decode", tmp_path / "a.ddc").exit_code == 0
    back = np.asarray(Image.open(tmp_path / "a.decoded.png"))
    assert back.shape == (64, 96, 3) and abs(psnr(back, small(96, 64)) - out["psnr"]) <= 0.05
    info = run("info", tmp_path / "a.ddc", "--json")
    assert json.loads(info.output)["tiles"] == [2, 2]


def test_auto_tiles_only_when_the_codec_chooses_k(tmp_path):
    Image.fromarray(small(384, 256)).save(tmp_path / "a.png")  # 2x2 auto tiles at 1 bpp
    quick = ["--bpp", "1.0", "--layers", "3", "--iters", "10", "--qat-iters", "0", "-q"]
    assert run("encode", tmp_path / "a.png", *quick).exit_code == 0  # k from the target: tiles
    assert (tmp_path / "a.ddc").read_bytes()[4] == ddcodec.tiles.VERSION
    assert run("encode", tmp_path / "a.png", *quick, "-k", "8", "--force").exit_code == 0  # k given
    assert (tmp_path / "a.ddc").read_bytes()[4] == 3  # one network for the whole image (k=8: no margin)


def test_bad_tile_values_and_tiles_with_restoration_are_one_line_errors(tmp_path):
    Image.fromarray(small(32, 32)).save(tmp_path / "a.png")
    _one_line_error(run("encode", tmp_path / "a.png", "--tile", "big", *FAST))
    _one_line_error(run("encode", tmp_path / "a.png", "--tile", "4x4", *FAST))
    _one_line_error(run("encode", tmp_path / "a.png", "--tile", "16x16", "--denoise", "-q"))


def test_a_warning_in_a_successful_run_is_one_line_at_the_end(tmp_path, monkeypatch):
    import torch

    def broken_compile(fn, **kw):
        def fail(*a):
            raise RuntimeError("no C++ compiler\nmore detail")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("ddcodec.compiling._PROGRAMS", {})  # not a program compiled by an earlier test
    Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", *FAST, "--compile")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if line.startswith("ddc: warning: torch.compile failed")]
    assert len(warned) == 1 and "more detail" not in res.output and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == warned[0]  # after the file's report line
    assert (tmp_path / "a.ddc").exists()  # the fit went on without the compiler


def test_an_interrupt_after_a_warning_still_says_one_line(tmp_path, monkeypatch):
    import warnings

    import ddcodec.codec

    def interrupted(*a, **kw):
        warnings.warn("Error detected in SomeBackward0. Traceback of forward call:\n  File ...")
        raise KeyboardInterrupt
    monkeypatch.setattr(ddcodec.codec, "optimise", interrupted)
    Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", *FAST)
    assert res.exit_code == 130
    assert [line for line in res.output.splitlines() if line.strip()] == ["ddc: interrupted; no partial output was left"]
    assert not (tmp_path / "a.ddc").exists()


def test_a_ctrl_c_that_torch_swallows_still_ends_the_encode(tmp_path, monkeypatch):
    import signal

    import ddcodec.codec

    real = ddcodec.codec.optimise

    def swallowing(*a, **kw):
        try:  # Ctrl-C arrives and torch.compile's machinery drops the KeyboardInterrupt
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass
        return real(*a, **kw)
    monkeypatch.setattr(ddcodec.codec, "optimise", swallowing)
    # as in a terminal, whether or not the suite was started with SIGINT ignored (a background job)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
        res = run("encode", tmp_path / "a.png", *FAST)
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
    assert res.exit_code == 130, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == ["ddc: interrupted; no partial output was left"]
    assert not (tmp_path / "a.ddc").exists()
    assert after is signal.default_int_handler  # ddc put the handler back


def test_a_ctrl_c_while_the_file_is_written_leaves_no_partial_output(tmp_path, monkeypatch):
    import os

    def interrupted(fd):  # the data is in the temp file, not yet renamed into place
        raise KeyboardInterrupt
    Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
    monkeypatch.setattr(os, "fsync", interrupted)
    res = run("encode", tmp_path / "a.png", *FAST)
    assert res.exit_code == 130, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == ["ddc: interrupted; no partial output was left"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # neither a.ddc nor its temp file


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    for opts in (["--bank", "0"], ["--iters", "0"], ["--no-such-option"]):
        res = run("encode", tmp_path / "a.png", *opts)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("ddc: error:"), res.output
    assert not (tmp_path / "a.ddc").exists()


def test_an_empty_input_name_does_not_mean_the_current_folder(tmp_path, monkeypatch):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    _one_line_error(run("encode", "", *FAST))  # IMAGES are plain strings: the encoder refuses it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_two_inputs_with_one_output_name_encode_the_first_and_report_the_second(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    Image.fromarray(small(16, 16)[::-1].copy()).save(tmp_path / "a.bmp")
    res = run("encode", tmp_path / "a.png", tmp_path / "a.bmp", *FAST)
    assert res.exit_code == 1 and "another input also maps to" in res.output and "a.bmp" in res.output
    assert ddcodec.info((tmp_path / "a.ddc").read_bytes())["width"] == 16
    assert "a.ddc:" in res.output  # the first one was written and reported


def _no_fit(*args, **kwargs):
    raise AssertionError("the fit ran before the outputs were checked")


def test_restoration_outputs_are_checked_before_the_fit(tmp_path, monkeypatch):
    from ddcodec import restore
    for name in ("inpaint", "superres", "denoise"):
        monkeypatch.setattr(restore, name, _no_fit)
    Image.fromarray(small(16, 16)).save(tmp_path / "x.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "m.png")
    mask = (tmp_path / "m.png").read_bytes()
    x = ["-k", "4", "-q"]
    _one_line_error(run("inpaint", tmp_path / "x.png", "--mask", tmp_path / "m.png", *x, "-o", tmp_path / "m.png", "--force"))
    assert (tmp_path / "m.png").read_bytes() == mask
    _one_line_error(run("superres", tmp_path / "x.png", *x, "-o", tmp_path / "o", "--ddc", tmp_path / "o"))
    _one_line_error(run("superres", tmp_path / "x.png", *x, "--ddc", tmp_path / "s.png"))
    _one_line_error(run("denoise", tmp_path / "x.png", *x, "--ddc", tmp_path / "no" / "x.ddc"))
    _one_line_error(run("denoise", tmp_path / "x.png", *x, "-o", tmp_path / "x.ddc"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png", "x.png"]


@pytest.mark.parametrize("task", ["denoise", "inpaint", "superres"])
@pytest.mark.parametrize("which", ["-o", "--ddc"])
def test_a_restoration_output_that_exists_is_replaced_only_with_force(task, which, tmp_path, monkeypatch):
    from ddcodec import restore
    monkeypatch.setattr(restore, task, _no_fit)
    Image.fromarray(small(16, 16)).save(tmp_path / "x.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "m.png")
    out = tmp_path / ("old.png" if which == "-o" else "old.ddc")
    out.write_bytes(b"earlier")
    extra = ["--mask", tmp_path / "m.png"] if task == "inpaint" else []
    res = run(task, tmp_path / "x.png", *extra, "-k", "4", "-q", which, out)
    _one_line_error(res)
    assert "exists" in res.output and out.read_bytes() == b"earlier"
    monkeypatch.undo()  # a real (two-step) fit: --force replaces the file with the new output
    res = run(task, tmp_path / "x.png", *extra, "-k", "4", "--iters", "2", "-q", which, out, "--force")
    assert res.exit_code == 0, res.output
    if which == "-o":
        assert Image.open(out).size == ((64, 64) if task == "superres" else (16, 16))
    else:
        assert ddcodec.decode(out.read_bytes()).shape[:2] == ((64, 64) if task == "superres" else (16, 16))


def test_demo_replaces_its_earlier_results_only_with_force(tmp_path, monkeypatch):
    (tmp_path / "sample.ddc").write_bytes(b"earlier")
    with monkeypatch.context() as m:
        m.setattr(ddcodec, "encode", _no_fit)
        _one_line_error(run("demo", "-o", tmp_path, "--iters", "5"))
    assert (tmp_path / "sample.ddc").read_bytes() == b"earlier"
    res = run("demo", "-o", tmp_path, "--iters", "2", "--device", "cpu", "--force")
    assert res.exit_code == 0, res.output
    assert ddcodec.decode((tmp_path / "sample.ddc").read_bytes()).shape == (128, 192, 3)


def test_an_empty_folder_or_output_name_is_refused(tmp_path, monkeypatch):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    for args in (["encode-dir", "", "-o", "out"], ["encode-dir", ".", "-o", ""], ["denoise", "", "-q"],
                 ["encode", "a.png", *FAST, "-o", ""], ["info", ""]):
        res = run(*args)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "empty name" in lines[0], (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_an_interrupt_dropped_in_a_weakref_callback_prints_no_traceback(tmp_path, monkeypatch):
    """Python reports an exception raised in a finaliser ("Exception ignored in ...") with a
    traceback, and torch.compile's guards hold weakref callbacks: a Ctrl-C landing there must
    still end the run with its one line."""
    import signal
    import sys
    import weakref

    import ddcodec.codec

    real = ddcodec.codec.optimise

    class Guarded:
        pass

    def dropped_in_a_callback(*a, **kw):
        obj = Guarded()
        ref = weakref.ref(obj, lambda _: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))
        del obj  # the callback runs here; its KeyboardInterrupt becomes "unraisable"
        assert ref() is None
        return real(*a, **kw)
    monkeypatch.setattr(ddcodec.codec, "optimise", dropped_in_a_callback)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's, not pytest's
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
        res = run("encode", tmp_path / "a.png", *FAST)
    finally:
        signal.signal(signal.SIGINT, before)
    assert res.exit_code == 130, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == ["ddc: interrupted; no partial output was left"]
    assert not (tmp_path / "a.ddc").exists()


def test_a_compile_preset_reaches_the_fit_and_contradicting_no_compile_is_an_error(tmp_path, monkeypatch):
    import ddcodec.codec

    seen = []
    real = ddcodec.codec.fit_bank
    monkeypatch.setattr(ddcodec.codec, "fit_bank", lambda *a, **kw: seen.append(a[3].compile) or real(*a, **kw))
    Image.fromarray(small(40, 24)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", *FAST, "--compile-preset", "fused", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert seen == ["fused"]
    _one_line_error(run("encode", tmp_path / "a.png", *FAST, "--no-compile", "--compile-preset", "fused", "--force"))
    assert seen == ["fused"]  # refused before any fit


def test_a_bad_setting_for_several_inputs_is_one_error_before_any_folder_is_made(tmp_path):
    for n in "ab":
        Image.fromarray(small(16, 16)).save(tmp_path / f"{n}.png")
    for opts in (["-k", "-1"], ["--layers", "99"]):
        _one_line_error(run("encode", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", *FAST[2:], *opts))
        assert not (tmp_path / "out").exists()
    (tmp_path / "in").mkdir()
    Image.fromarray(small(16, 16)).save(tmp_path / "in" / "a.png")
    _one_line_error(run("encode-dir", tmp_path / "in", "-o", tmp_path / "out", *FAST[2:], "-k", "-1"))
    assert not (tmp_path / "out").exists()


def test_max_pixels_must_be_positive(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    for command in ("encode", "encode-dir"):
        res = run(command, tmp_path if command == "encode-dir" else tmp_path / "a.png", "-o", tmp_path / "o",
                  "--max-pixels", "0", *FAST)
        assert res.exit_code == 2 and "--max-pixels" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_pattern_that_matches_nothing_is_an_error_not_a_silent_skip(tmp_path):
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    res = run("encode", tmp_path / "a.png", tmp_path / "nomatch*.png", "-o", tmp_path / "out", *FAST)
    _one_line_error(res)
    assert "nomatch*.png: no image file matches" in res.output and not (tmp_path / "out").exists()


def test_an_unsupported_image_is_named_in_its_error(tmp_path):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "alpha.png")  # transparent
    res = run("encode", tmp_path / "alpha.png", *FAST)
    _one_line_error(res)
    assert f"{tmp_path / 'alpha.png'}: images with transparency" in res.output


def test_demo_with_a_bad_device_makes_no_folder(tmp_path):
    _one_line_error(run("demo", "-o", tmp_path / "demo", "--device", "bogus"))
    assert not (tmp_path / "demo").exists()


def test_a_batch_that_writes_nothing_leaves_no_folder_of_its_own(tmp_path, monkeypatch):
    import ddcodec.codec

    for n in "ab":
        Image.fromarray(small(16, 16)).save(tmp_path / f"{n}.png")
    (tmp_path / "bad1.png").write_bytes(b"not an image")
    (tmp_path / "bad2.png").write_bytes(b"nor this")
    # every input bad: a line for each, the count as the error, and the folder it made is gone again
    res = run("encode", tmp_path / "bad1.png", tmp_path / "bad2.png", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == "ddc: error: 2 of 2 images failed"
    assert not (tmp_path / "out").exists()

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(ddcodec.codec, "optimise", interrupted)
    res = run("encode", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 130, res.output
    assert not (tmp_path / "out").exists()  # Ctrl-C before the first bank was written
    (tmp_path / "mine").mkdir()  # a folder that was there before the run stays, empty or not
    res = run("encode", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "mine", *FAST)
    assert res.exit_code == 130 and (tmp_path / "mine").is_dir()


def test_names_with_spaces_non_ascii_and_glob_characters_are_taken_literally(tmp_path):
    # a file that exists is an input as named, even when its name would also be a glob pattern
    # ("[1]" matches "1", not itself); a second image, "x1.png", is what such a glob would find
    names = ["ünï cødé.png", "x[1].png"]
    for n in names + ["x1.png"]:
        Image.fromarray(small(24, 16)).save(tmp_path / n)
    res = run("encode", *(tmp_path / n for n in names), *FAST, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x[1].ddc", "ünï cødé.ddc"]
    res = run("decode", tmp_path / "out" / "ünï cødé.ddc")
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "out" / "ünï cødé.decoded.png")).shape == (16, 24, 3)


CPU_FULL = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)")


def _raising(error):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


def test_running_out_of_cpu_memory_is_a_one_line_error_and_no_output(tmp_path, ddc_bytes, monkeypatch):
    from ddcodec import codec, exact
    (tmp_path / "x.ddc").write_bytes(ddc_bytes)
    monkeypatch.setattr(exact, "render", _raising(RuntimeError(CPU_FULL)))
    res = run("decode", tmp_path / "x.ddc")
    _one_line_error(res)
    assert "out of memory" in res.output and "GPU" not in res.output
    Image.fromarray(small(16, 16)).save(tmp_path / "a.png")
    monkeypatch.setattr(codec, "optimise", _raising(RuntimeError(CPU_FULL)))  # the fit's allocations
    res = run("encode", tmp_path / "a.png", "-k", "4", "--iters", "5", "-q")
    _one_line_error(res)
    assert "out of memory" in res.output and "GPU" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "x.ddc"]


def test_a_runtime_error_that_is_not_a_full_device_is_not_hidden(tmp_path, ddc_bytes, monkeypatch):
    from ddcodec import exact
    (tmp_path / "x.ddc").write_bytes(ddc_bytes)
    monkeypatch.setattr(exact, "render", _raising(RuntimeError("a bug, not a full device")))
    res = run("decode", tmp_path / "x.ddc")
    assert isinstance(res.exception, RuntimeError) and "a bug" in str(res.exception)


def test_encode_takes_the_optimizer_and_passes_it_to_the_fit(tmp_path):
    img = small(24, 16)
    Image.fromarray(img).save(tmp_path / "a.png")
    files = {}
    for opt in ("auto", "adam", "muon"):
        out = tmp_path / f"{opt}.ddc"
        res = run("encode", tmp_path / "a.png", "-o", out, *FAST, "--optimizer", opt)
        assert res.exit_code == 0, res.output
        files[opt] = out.read_bytes()
    lib = ddcodec.encode(img, 8, fit=ddcodec.FitConfig(iters=60, optimizer="adam"),
                         quant=ddcodec.QuantConfig(qat_iters=5), device="cpu").data
    assert files["adam"] == lib and files["auto"] == files["muon"] != files["adam"]
    _one_line_error(run("encode", tmp_path / "a.png", "-o", tmp_path / "s.ddc", *FAST, "--arch", "skip",
                        "--optimizer", "muon"))
    Image.fromarray(img[::-1].copy()).save(tmp_path / "b.png")  # several images: one error, not one each
    res = run("encode", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "many", *FAST, "--arch", "skip",
              "--optimizer", "muon")
    _one_line_error(res)
    assert "Muon" in res.output and not (tmp_path / "many").exists()
    _one_line_error(run("encode", tmp_path / "a.png", "-o", tmp_path / "d.ddc", *FAST, "--denoise", "--optimizer", "muon"))


def test_the_restoration_commands_take_margin_and_pass_it_to_the_library(tmp_path):
    img = small(24, 16)
    Image.fromarray(img).save(tmp_path / "x.png")
    opts = ["-k", "9", "--layers", "3", "--iters", "5", "-q"]
    # k=9: auto gives both the margin (FitConfig.margin_for)
    for margin, versions in (("auto", (5, 5)), ("on", (5, 5)), ("off", (3, 3))):
        assert run("superres", tmp_path / "x.png", "--scale", "2", *opts, "--margin", margin,
                   "-o", tmp_path / f"s-{margin}.png", "--ddc", tmp_path / f"s-{margin}.ddc").exit_code == 0
        assert run("encode", tmp_path / "x.png", "--denoise", *opts, "--margin", margin,
                   "-o", tmp_path / f"d-{margin}.ddc").exit_code == 0
        written = tuple((tmp_path / f"{task}-{margin}.ddc").read_bytes()[4] for task in "sd")
        assert written == versions, margin
    from ddcodec import restore
    assert (tmp_path / "s-off.ddc").read_bytes() == restore.superres(img, 2, channels=9, layers=3, iters=5, device="cpu",
                                                                     margin=False).result.data
    _one_line_error(run("denoise", tmp_path / "x.png", *opts, "--arch", "skip", "--margin", "on"))
