"""Interruption, determinism, the golden file of each format version, awkward images."""
import hashlib
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddcodec
from ddcodec import FitConfig, QuantConfig
from ddcodec.codec import load_model
from ddcodec.metrics import psnr

from .conftest import assert_decodes_like_the_fit, small

DATA = Path(__file__).parent / "data"


def _start_encode(tmp_path):
    Image.fromarray(small(96, 64)).save(tmp_path / "in.png")
    # not --quiet: the note on a long encode, printed once the fit has timed its first steps,
    # says that it is fitting (_wait_until_fitting)
    cmd = [sys.executable, "-m", "ddcodec_cli.main", "encode", str(tmp_path / "in.png"),
           "--iters", "1000000", "-k", "8", "--device", "cpu"]
    # A shell starts background jobs with SIGINT ignored, and a child inherits that; restore the
    # default so the test sees what a user's Ctrl-C does, however the suite itself was started.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_until_fitting(proc, guard=600.0):
    """Until the encode's first line on stderr, its note that the encode will take long: the
    fit has then run its first timed steps. No sleep that assumes how fast this machine starts;
    guard only stops a test that would otherwise wait forever."""
    import select
    ready, _, _ = select.select([proc.stderr], [], [], guard)
    assert ready, "the encode said nothing within the guard"
    line = proc.stderr.readline()
    assert line.startswith("note: this encode will take"), line
    assert proc.poll() is None


def test_ctrl_c_exits_130_with_one_line_and_no_output(tmp_path):
    proc = _start_encode(tmp_path)
    try:
        _wait_until_fitting(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a million-iteration fit behind a failed test
    # A shell reads both as status 130. When Ctrl-C lands in torch's lazy start-up, Python ends
    # the process by SIGINT even after ddc caught the interrupt and asked for 130.
    assert proc.returncode in (130, -signal.SIGINT), err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_sigkill_during_the_fit_leaves_no_output(tmp_path):
    proc = _start_encode(tmp_path)
    try:
        _wait_until_fitting(proc)
    finally:
        proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_sigkill_in_the_middle_of_a_write_never_leaves_a_partial_file_under_the_output_name(tmp_path):
    out = tmp_path / "o.ddc"
    code = ("import os, signal\n"
            "import ddcodec.images as im\n"
            "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # data written, not yet renamed\n"
            f"im.write_atomic({str(out)!r}, b'x' * (1 << 20))\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir()]  # at most the hidden temp file a kill cannot clean
    assert all(n.startswith(".o.ddc.") and n.endswith(".tmp") for n in left) and len(left) <= 1


@pytest.mark.parametrize("version", [1, 2, 3])
def test_golden_file_of_each_version_still_decodes_to_its_stored_hashes(version):
    data = (DATA / f"golden-v{version}.ddc").read_bytes()
    expect = json.loads((DATA / f"golden-v{version}.json").read_text())
    assert data[4] == version == expect["version"]
    _, model = load_model(data)
    weights = b"".join(t.detach().numpy().astype("<f4").tobytes() for _, t in model.named_tensors())
    assert hashlib.sha256(weights).hexdigest() == expect["weights_sha256"]  # exact everywhere
    img = ddcodec.decode(data)
    assert hashlib.sha256(img.tobytes()).hexdigest() == expect["pixels_sha256"]  # exact everywhere too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; runs wherever one is")
def test_gpu_encode_decodes_on_the_cpu_within_a_level():
    img = small(96, 64)
    r = ddcodec.encode(img, channels=8, fit=FitConfig(iters=200), device="cuda")
    cpu = ddcodec.decode(r.data, device="cpu")
    assert psnr(cpu, img) == r.psnr  # the encoder's own (GPU) decode reported the same pixels
    assert np.array_equal(cpu, ddcodec.decode(r.data, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; runs wherever one is")
def test_gpu_fit_through_cuda_graphs_lands_where_the_eager_fit_does():
    from ddcodec.fit import mse_per_image, optimise
    from ddcodec.nets import Architecture, build, seeded_input

    arch = Architecture(channels=8, layers=4)
    img = torch.from_numpy(small(96, 64)).permute(2, 0, 1)[None].float().cuda() / 255
    z = seeded_input(arch, 64, 96, 0)[None].cuda()
    losses = {}
    for mode in (False, "reduce-overhead"):
        model = build(arch).cuda()
        losses[mode] = float(optimise(model, z, lambda out: mse_per_image(out, img), 100, 0.01, compile=mode)[0])
    assert math.isfinite(losses["reduce-overhead"])
    assert abs(10 * math.log10(losses[False] / losses["reduce-overhead"])) < 0.3  # dB


def test_a_1x4000_image_round_trips():
    img = np.asarray(Image.fromarray(small(400, 4)).resize((4000, 1)))
    r = ddcodec.encode(img, channels=4, layers=5, fit=FitConfig(iters=30),
                       quant=QuantConfig(qat_iters=3), device="cpu")
    out = ddcodec.decode(r.data)
    assert out.shape == (1, 4000, 3) and abs(psnr(out, img) - r.psnr) <= 0.05
    assert_decodes_like_the_fit(out, img, r)


def test_encoder_refuses_images_the_decoder_would_refuse():
    with pytest.raises(ddcodec.DDCError, match="limit"):
        ddcodec.encode(np.zeros((4096, 4096), np.uint8), channels=64, device="cpu")


@pytest.mark.parametrize("arch,layers", [("deep-decoder", 1), ("skip", 1)])
def test_a_1x1_image_with_one_block_round_trips(arch, layers):
    """Found by the fuzzer: channel normalisation over a single pixel raised an untyped
    ValueError (batch_norm refuses one value per channel); it now normalises to 0."""
    img = np.full((1, 1, 3), 100, np.uint8)
    r = ddcodec.encode(img, 3, layers, FitConfig(iters=20), QuantConfig(qat_iters=2), "cpu", arch=arch)
    out = ddcodec.decode(r.data)
    assert_decodes_like_the_fit(out, img, r)
    assert np.abs(out.astype(int) - 100).max() <= 16  # the constant (a grey 128 is 28 off), not just its shape
