"""The command line against awkward paths and batches: names too long for the file system,
loops of symbolic links, a write that fails in the middle of a bank, inputs named twice or
matched by a pattern with other files, folders a run made and has to remove again."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ddcodec
import ddcodec.collection
from ddcodec.errors import OutputError
from ddcodec.images import write_atomic

from .conftest import small
from .test_cli import FAST, _no_fit, _one_line_error, run

LONG = "n" * 300  # over NAME_MAX (255 bytes) on every common file system


def _images(folder, names, size=(16, 16)):
    folder.mkdir(exist_ok=True)
    for n in names:
        Image.fromarray(small(*size)).save(folder / n)


def test_names_too_long_and_loops_of_links_are_one_line_errors(tmp_path, ddc_bytes):
    _images(tmp_path, ["a.png"])
    (tmp_path / "a.ddc").write_bytes(ddc_bytes)
    os.symlink("loop.ddc", tmp_path / "loop.ddc")  # a link to itself
    os.symlink("loop.png", tmp_path / "loop.png")
    for args in (["decode", tmp_path / "a.ddc", "-o", tmp_path / f"{LONG}.png"],
                 ["encode", tmp_path / f"{LONG}.png", *FAST],
                 ["encode", tmp_path / "a.png", "-o", tmp_path / "loop.ddc", *FAST, "--force"],
                 ["encode", tmp_path / "loop.png", "-o", tmp_path / "b.ddc", *FAST],
                 ["encode-dir", tmp_path / LONG, "-o", tmp_path / "out", *FAST]):
        _one_line_error(run(*args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ddc", "a.png", "loop.ddc", "loop.png"]


def test_a_bad_name_in_a_batch_is_skipped_and_the_rest_encoded(tmp_path):
    _images(tmp_path, ["a.png"])
    os.symlink("loop.png", tmp_path / "loop.png")
    res = run("encode", tmp_path / "a.png", tmp_path / "loop.png", tmp_path / f"{LONG}.png", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == "ddc: error: 2 of 3 images failed"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.ddc"]


def test_an_output_name_at_the_file_systems_limit_is_written(tmp_path):
    # the temp file beside it must not need a longer name than the output's own
    name = "x" * 251 + ".ddc"
    write_atomic(tmp_path / name, b"data")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes() == b"data"


def test_a_failed_write_fails_that_image_alone(tmp_path, monkeypatch):
    import ddcodec_cli.batch as batch
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    real = batch.write_atomic

    def failing(path, *args, **kwargs):
        if path.name == "b.ddc":
            raise OutputError(f"cannot write {path}: No space left on device")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(batch, "write_atomic", failing)
    res = run("encode", tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 1
    failed = [line for line in res.output.splitlines() if line.startswith("ddc: failed")]
    assert len(failed) == 1 and "b.png" in failed[0] and "No space left" in failed[0]
    assert res.output.strip().splitlines()[-1] == "ddc: error: 1 of 3 images failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ddc", "c.ddc"]


def test_one_file_with_glob_characters_in_its_name_is_one_output_file(tmp_path):
    _images(tmp_path, ["g[1].png", "g1.png"])  # g1.png: what the name would match as a pattern
    res = run("encode", tmp_path / "g[1].png", "-o", tmp_path / "one.ddc", *FAST)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "one.ddc").is_file()
    assert ddcodec.decode((tmp_path / "one.ddc").read_bytes()).shape == (16, 16, 3)


def test_the_same_image_named_twice_is_encoded_once(tmp_path, monkeypatch):
    _images(tmp_path, ["a.png"])
    monkeypatch.chdir(tmp_path)
    res = run("encode", "a.png", "./a.png", tmp_path / "a.png", "-o", "out", *FAST)
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.ddc"]  # a folder: three inputs named


def test_a_pattern_takes_only_the_image_files_it_matches(tmp_path):
    _images(tmp_path / "g", ["a.png", "b.png"])
    (tmp_path / "g" / "sub.png").mkdir()  # a folder with an image's suffix
    res = run("encode", tmp_path / "g" / "*", *FAST)
    assert res.exit_code == 0, res.output
    before = (tmp_path / "g" / "a.ddc").read_bytes()
    # again with --force: the .ddc files of the first run are matched too, and are not inputs
    res = run("encode", tmp_path / "g" / "*", *FAST, "--force")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["a.ddc", "a.png", "b.ddc", "b.png", "sub.png"]
    assert (tmp_path / "g" / "a.ddc").read_bytes() == before


def test_a_run_that_writes_nothing_removes_every_folder_it_made(tmp_path, monkeypatch):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "worse.png").write_bytes(b"nor this")
    res = run("encode", tmp_path / "bad.png", tmp_path / "worse.png", "-o", tmp_path / "deep" / "er" / "out", *FAST)
    assert res.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "worse.png"]
    (tmp_path / "kept").mkdir()  # made before the run: stays, and so does what is under it
    res = run("encode", tmp_path / "bad.png", tmp_path / "worse.png", "-o", tmp_path / "kept" / "new" / "out", *FAST)
    assert res.exit_code == 1 and list((tmp_path / "kept").iterdir()) == []


def test_an_interrupted_demo_leaves_no_folder(tmp_path, monkeypatch):
    import tempfile

    def made(prefix=""):
        (tmp_path / "demo-tmp").mkdir()
        return str(tmp_path / "demo-tmp")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tempfile, "mkdtemp", made)
    monkeypatch.setattr(ddcodec, "encode", interrupted)
    assert run("demo", "--iters", "5").exit_code == 130
    assert run("demo", "--iters", "5", "-o", tmp_path / "new" / "sub").exit_code == 130
    assert list(tmp_path.iterdir()) == []


def test_encode_dir_refuses_an_output_it_could_not_write_before_any_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(ddcodec.collection, "encode_bank", _no_fit)
    _images(tmp_path / "in", ["a.png", "b.png"])
    (tmp_path / "file").write_bytes(b"in the way")
    res = run("encode-dir", tmp_path / "in", "-o", tmp_path / "file" / "sub", *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output
    failed = [line for line in res.output.splitlines() if line.startswith("ddc: failed")]
    assert len(failed) == 2 and all("is not a folder" in line for line in failed)
    (tmp_path / "out").mkdir()
    os.symlink("elsewhere.ddc", tmp_path / "out" / "a.ddc")  # a link where a.ddc goes: never replaced
    jobs, settled = ddcodec.collection.plan(ddcodec.collection.folder_pairs(tmp_path / "in", tmp_path / "out"), force=True)
    assert [(os.path.basename(o.output), o.status) for o in settled] == [("a.ddc", "failed")]
    assert "not a regular file" in settled[0].error
    assert jobs[0].settled == frozenset({str(tmp_path / "out" / "a.ddc")})  # fitted with its bank, never written


@pytest.mark.parametrize("command", ["encode", "encode-dir"])
def test_json_lines_stay_json_when_the_fit_is_exact(tmp_path, monkeypatch, command):
    # an exact fit's PSNR is infinite; JSON has no infinity, so it is null there
    _images(tmp_path / "in", ["a.png"])
    real = ddcodec.encode_bank

    def exact(*args, **kwargs):
        results = real(*args, **kwargs)
        for r in results:
            r.psnr = r.psnr_float = float("inf")
        return results
    monkeypatch.setattr(ddcodec, "encode_bank", exact)
    monkeypatch.setattr(ddcodec.collection, "encode_bank", exact)
    res = run(command, tmp_path / "in" if command == "encode-dir" else tmp_path / "in" / "a.png", "-o", tmp_path / "out",
              *FAST, "--json")
    assert res.exit_code == 0, res.output

    def strict(token):
        raise ValueError(f"not JSON: {token}")
    line = json.loads(res.output.strip().splitlines()[-1], parse_constant=strict)
    assert line["psnr"] is None and line["psnr_float"] is None and line["bytes"] > 0


def test_a_file_larger_than_any_ddc_is_refused_without_reading_it_to_the_end(tmp_path, ddc_bytes, monkeypatch):
    import ddcodec.decoding
    from ddcodec.errors import LimitError
    monkeypatch.setattr(ddcodec.decoding, "MAX_FILE_BYTES", len(ddc_bytes) + 3)
    (tmp_path / "a.ddc").write_bytes(ddc_bytes + b"\0" * 4)
    for args in (["info", tmp_path / "a.ddc"], ["decode", tmp_path / "a.ddc"]):
        res = run(*args)
        _one_line_error(res)
        assert res.output.startswith(f"ddc: error: {tmp_path / 'a.ddc'}: larger than any .ddc")  # named once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ddc"]
    if os.path.exists("/dev/zero"):  # endless: read up to the bound, then refused
        with pytest.raises(LimitError):
            ddcodec.decoding.read_file("/dev/zero")


def test_a_bank_that_runs_out_of_memory_fails_alone(tmp_path, monkeypatch):
    _images(tmp_path / "in", ["a.png", "b.png"])
    _images(tmp_path / "in", ["c.png"], size=(24, 16))  # another size: a bank of its own
    real, calls = ddcodec.encode_bank, []

    def full_once(images, *args, **kwargs):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(images, *args, **kwargs)
    monkeypatch.setattr(ddcodec, "encode_bank", full_once)
    res = run("encode", tmp_path / "in", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output and len(calls) == 2
    failed = [line for line in res.output.splitlines() if line.startswith("ddc: failed")]
    assert len(failed) == 2 and all("out of memory in a bank of 2" in line for line in failed)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c.ddc"]
    assert res.output.strip().splitlines()[-1] == "ddc: error: 2 of 3 images failed"


def test_encode_dir_goes_on_after_a_bank_that_runs_out_of_memory(tmp_path, monkeypatch):
    _images(tmp_path / "in", ["a.png", "b.png"])
    _images(tmp_path / "in", ["c.png"], size=(24, 16))
    real, calls = ddcodec.collection.encode_bank, []

    def full_once(images, *args, **kwargs):
        calls.append(len(images))
        if len(calls) == 1:
            raise MemoryError
        return real(images, *args, **kwargs)
    monkeypatch.setattr(ddcodec.collection, "encode_bank", full_once)
    res = run("encode-dir", tmp_path / "in", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 1 and "Traceback" not in res.output and len(calls) == 2
    assert "1 encoded, 0 already done, 2 failed" in res.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c.ddc"]


def test_a_rate_target_with_a_mask_picks_k_from_the_target(tmp_path):
    # the restoration default (k=128) cannot keep to 2 bpp on a 32x32 image: once found only
    # after the whole fit ("cannot reach 2 bpp with 99331 weights")
    _images(tmp_path, ["a.png"], size=(32, 32))
    mask = np.full((32, 32), 255, np.uint8)
    mask[8:16, 8:24] = 0
    Image.fromarray(mask).save(tmp_path / "m.png")
    res = run("encode", tmp_path / "a.png", "--mask", tmp_path / "m.png", "--bpp", "2", *FAST[2:], "--json")
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert line["bpp"] <= 2 and line["arch"]["channels"] < 128


def test_a_demo_interrupted_after_its_last_report_writes_nothing(tmp_path, monkeypatch):
    # torch can swallow a Ctrl-C; the latch must still end the demo before its files
    from ddcodec_cli import interrupt
    real = ddcodec.encode

    def swallowed(*args, **kwargs):
        res = real(*args, **kwargs)
        monkeypatch.setattr(interrupt, "_pending", True)
        return res
    monkeypatch.setattr(ddcodec, "encode", swallowed)
    res = run("demo", "--iters", "2", "--device", "cpu", "-o", tmp_path / "d")
    assert res.exit_code == 130
    assert not (tmp_path / "d").exists()


def test_an_output_ending_in_a_slash_is_a_folder_for_one_image_too(tmp_path):
    _images(tmp_path, ["a.png"])
    res = run("encode", tmp_path / "a.png", "-o", f"{tmp_path / 'out'}/", *FAST)
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.ddc"]


def test_json_gives_every_input_a_line_written_or_failed(tmp_path):
    # as encode-dir does: a script reading stdout sees the failures too, not only the stderr text
    _images(tmp_path, ["a.png"])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    res = run("encode", tmp_path / "a.png", tmp_path / "bad.png", "-o", tmp_path / "out", *FAST, "--json")
    assert res.exit_code == 1
    lines = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    by_input = {os.path.basename(d["input"]): d for d in lines}
    assert by_input["a.png"]["status"] == "written" and by_input["a.png"]["bytes"] > 0
    assert by_input["bad.png"]["status"] == "failed" and "cannot read image" in by_input["bad.png"]["error"]


@pytest.mark.parametrize("case", ["unreadable", "target"])
def test_json_gives_a_single_failed_input_its_line_too(tmp_path, case):
    if case == "unreadable":
        (tmp_path / "a.png").write_bytes(b"not an image")
        extra = []
    else:
        _images(tmp_path, ["a.png"])
        extra = ["--psnr", "60"]  # far above what 60 iterations reach: the bank's fit fails it
    res = run("encode", tmp_path / "a.png", *FAST, *extra, "--json")
    assert res.exit_code == 1
    lines = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [(os.path.basename(d["input"]), d["status"]) for d in lines] == [("a.png", "failed")]
    assert lines[0]["error"] and lines[0]["output"] == str(tmp_path / "a.ddc")
    assert not (tmp_path / "a.ddc").exists()


@pytest.mark.timeout(120)  # before the fix a read of the pipe waited for a writer for ever
@pytest.mark.parametrize("command", ["encode", "decode", "denoise"])
def test_a_pipe_without_an_output_name_is_refused_before_it_is_read(tmp_path, monkeypatch, command):
    # the default output beside it, e.g. /dev/fd/63.ddc, passed every check and failed after the fit
    from ddcodec import restore
    monkeypatch.setattr(restore, "denoise", _no_fit)
    monkeypatch.setattr(ddcodec, "encode_bank", _no_fit)
    p = tmp_path / ("pipe.ddc" if command == "decode" else "pipe.png")
    os.mkfifo(p)  # no writer: a read would wait for ever
    res = run(command, p, *{"encode": FAST, "decode": [], "denoise": ["-k", "8", "--iters", "60", "-q"]}[command])
    _one_line_error(res)
    assert "name the output (-o" in res.output
    assert sorted(q.name for q in tmp_path.iterdir()) == [p.name]


def test_a_restoration_output_whose_writer_fails_is_refused_before_the_fit(tmp_path, monkeypatch):
    from ddcodec import restore
    monkeypatch.setattr(restore, "denoise", _no_fit)
    Image.fromarray(small(16, 16)).save(tmp_path / "x.png")
    for name in ("y.wmf", "y.xbm"):
        res = run("denoise", tmp_path / "x.png", "-o", tmp_path / name, "-k", "8", "--iters", "60", "-q")
        _one_line_error(res)
        assert "cannot write this image" in res.output and not (tmp_path / name).exists()


def test_pillows_log_of_a_bad_tiff_is_not_a_second_line(tmp_path):
    import struct
    Image.new("RGB", (8, 8)).save(tmp_path / "s.tif")
    d = bytearray((tmp_path / "s.tif").read_bytes())
    ifd = struct.unpack("<I", d[4:8])[0]
    for i in range(struct.unpack("<H", d[ifd:ifd + 2])[0]):
        e = ifd + 2 + 12 * i
        if struct.unpack("<H", d[e:e + 2])[0] == 277:  # SamplesPerPixel
            d[e + 8:e + 10] = struct.pack("<H", 2048)
    (tmp_path / "s.tif").write_bytes(bytes(d))
    # a process of its own: pytest's log capture would take the record that Python prints
    p = subprocess.run([sys.executable, "-m", "ddcodec_cli.main", "encode", str(tmp_path / "s.tif"), *FAST],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.splitlines() == [f"ddc: error: {tmp_path / 's.tif'}: cannot read image (not a format Pillow reads, or damaged)"]


@pytest.mark.parametrize("option", ["decode -o", "denoise -o", "denoise --ddc", "inpaint -o"])
def test_a_file_output_ending_in_a_slash_is_refused_not_written_as_a_file(tmp_path, ddc_bytes, monkeypatch, option):
    # encode takes "out/" as a folder; these write one file, which was written under the name "out"
    from ddcodec import restore
    for name in ("denoise", "inpaint"):
        monkeypatch.setattr(restore, name, _no_fit)
    (tmp_path / "x.ddc").write_bytes(ddc_bytes)
    Image.fromarray(small(16, 16)).save(tmp_path / "x.png")
    command, flag = option.split()
    args = {"decode": [tmp_path / "x.ddc"], "denoise": [tmp_path / "x.png"],
            "inpaint": [tmp_path / "x.png", "--mask", tmp_path / "x.png"]}[command]
    res = run(command, *args, flag, f"{tmp_path / 'out'}/")
    assert res.exit_code == 2 and "names a folder" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()


def test_a_psnr_target_one_image_of_a_bank_misses_fails_it_alone(tmp_path):
    from .test_rate import _easy_and_hard
    for name, img in zip(("easy.png", "hard.png"), _easy_and_hard()):
        Image.fromarray(img).save(tmp_path / name)
    res = run("encode", tmp_path / "easy.png", tmp_path / "hard.png", "-o", tmp_path / "out", "-k", "8", "--layers", "4",
              "--iters", "150", "--qat-iters", "5", "--psnr", "15", "--json", "-q")
    assert res.exit_code == 1
    lines = {os.path.basename(d["input"]): d for d in map(json.loads, filter(lambda x: x.startswith("{"), res.output.splitlines()))}
    assert lines["easy.png"]["status"] == "written" and lines["easy.png"]["psnr"] >= 15
    assert lines["hard.png"]["status"] == "failed" and "below the target 15" in lines["hard.png"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["easy.ddc"]


def test_json_gives_a_single_input_refused_for_its_output_name_its_line(tmp_path):
    _images(tmp_path, ["a.png"])
    res = run("encode", tmp_path / "a.png", "-o", tmp_path / "x.png", *FAST, "--json")
    assert res.exit_code == 1
    lines = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [(d["status"], d["output"]) for d in lines] == [("failed", str(tmp_path / "x.png"))]


def test_the_skip_net_with_a_rate_target_takes_k_from_it(tmp_path, monkeypatch):
    seen = {}

    def fake(images, channels, layers, *a, **kw):  # what the CLI asks of the library
        seen.update(channels=channels, layers=layers)
        raise ddcodec.errors.ConfigError("stop here")
    monkeypatch.setattr(ddcodec, "encode_bank", fake)
    _images(tmp_path, ["a.png"])
    run("encode", tmp_path / "a.png", "--arch", "skip", "--bpp", "60", "--iters", "3", "-q")
    assert seen == {"channels": None, "layers": 5}  # as encode_bank(channels=None) does for the skip net
