"""Restoration API: the denoiser's output average and the .ddc that is distilled to decode to it."""
import numpy as np
import pytest
import torch

import ddcodec
from ddcodec import restore
from ddcodec.codec import _Average
from ddcodec.metrics import psnr

from .conftest import small


def test_output_average_is_exponential_clamped_and_forgets_the_start():
    avg = _Average(0.99)
    for v in (1.0, 0.0, 2.0):  # 2.0 is clamped to 1; the decay ramps 2/11, 3/12 after the first
        avg(torch.full((1, 1, 2, 2), v))
    expect = (1.0 * 2 / 11 + 0.0 * 9 / 11) * 3 / 12 + 1.0 * 9 / 12
    assert torch.allclose(avg.value, torch.full((1, 1, 2, 2), expect))
    for _ in range(2000):
        avg(torch.zeros(1, 1, 2, 2))
    assert float(avg.value.max()) < 1e-6  # the steady decay is 0.99


def test_denoise_returns_the_average_and_its_ddc_decodes_close_to_it():
    clean = small(96, 64)
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    r = restore.denoise(noisy, channels=32, layers=4, iters=300, device="cpu")
    decoded = ddcodec.decode(r.result.data)
    assert r.image.shape == clean.shape
    assert psnr(decoded, r.image) >= 30  # the distillation brings the network to its average
    assert psnr(r.image, clean) > psnr(noisy, clean) + 3  # and the average is denoised


def test_skip_net_denoising_stops_by_the_discrepancy_principle_before_its_cap():
    clean = small(32, 32)
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    r = restore.denoise(noisy, arch="skip", channels=16, layers=3, device="cpu")
    cap = restore.DISCREPANCY_CAP["skip"] * restore.denoise_iterations(r.sigma, 3000, "skip", 32 * 32)
    assert r.iters < cap and r.iters % 10 == 0  # stopped early, at a test point
    assert psnr(r.image, clean) > psnr(noisy, clean)


@pytest.mark.parametrize("margin", [True, False])
def test_deep_decoder_denoising_stops_by_the_discrepancy_principle_only_with_the_margin(margin, monkeypatch):
    seen = {}

    def fit_bank(images, channels, layers, fit, *a, **k):  # the fit as denoise sets it up
        seen["fit"] = fit
        raise RuntimeError("stop here")

    monkeypatch.setattr(restore, "fit_bank", fit_bank)
    rng = np.random.default_rng(2)
    noisy = np.clip(small(192, 128) + rng.normal(0, 25, (128, 192, 3)), 0, 255).round().astype(np.uint8)
    with pytest.raises(RuntimeError, match="stop here"):
        restore.denoise(noisy, margin=margin, device="cpu")
    fit, sigma = seen["fit"], restore.estimate_sigma(noisy)
    assert fit.iters == restore.denoise_iterations(sigma, 3000, "deep-decoder", 192 * 128)  # the budget caps both
    assert fit.stop_mse == (pytest.approx(restore.DISCREPANCY * (sigma / 255) ** 2) if margin else 0.0)


@pytest.mark.parametrize("task,arch,compiles", [("denoise", "deep-decoder", True), ("inpaint", "deep-decoder", False),
                                                 ("superres", "deep-decoder", False), ("denoise", "skip", False)])
def test_only_the_deep_decoders_denoising_compiles_by_the_compression_rule(task, arch, compiles, monkeypatch):
    # denoising fits the whole image, as compression does; a mask or a scale, or the skip net,
    # fits eagerly (FitConfig.compile_for). Every fit's work counts as large here.
    from ddcodec import codec, fit as fit_module
    seen = {}

    def optimise(*a, compile=None, **k):
        seen["compile"] = compile
        raise RuntimeError("stop here")

    monkeypatch.setattr(codec, "optimise", optimise)
    monkeypatch.setattr(fit_module, "COMPILE_WORK", 0)
    img = small(48, 32)
    args = {"denoise": (img,), "inpaint": (img, np.tile([[0, 255]], (32, 24)).astype(np.uint8)), "superres": (img,)}[task]
    with pytest.raises(RuntimeError, match="stop here"):
        getattr(restore, task)(*args, arch=arch, channels=8, layers=3, device="cpu")
    assert seen["compile"] is compiles


def test_deep_decoder_denoising_with_the_margin_stops_early_once_the_noise_is_reached():
    clean = small(48, 32)  # k=64 has more weights than the image has values: it soon fits the noise
    rng = np.random.default_rng(3)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    r = restore.denoise(noisy, channels=64, layers=4, margin=True, device="cpu")
    assert r.iters < restore.denoise_iterations(r.sigma, 3000, "deep-decoder", 48 * 32) and r.iters % 10 == 0
    assert psnr(r.image, clean) > psnr(noisy, clean)


@pytest.mark.parametrize("task", ["denoise", "inpaint", "superres"])
@pytest.mark.parametrize("iters", [0, -3, 2.5, True])
def test_an_iteration_count_below_one_or_not_whole_is_refused_before_any_fit(task, iters, monkeypatch):
    def no_fit(*a, **k):
        raise AssertionError("fitted")

    monkeypatch.setattr(restore, "fit_bank", no_fit)
    img = small(48, 32)
    args = {"denoise": (img,), "inpaint": (img, np.full(img.shape[:2], 255, np.uint8)), "superres": (img,)}[task]
    with pytest.raises(ddcodec.errors.ConfigError, match="iters"):
        getattr(restore, task)(*args, iters=iters, device="cpu")


def test_superres_output_downsamples_to_the_input_and_beats_nearest_neighbour():
    from PIL import Image
    from ddcodec.degrade import Degradation
    clean = small(64, 48)
    low = np.asarray(Image.fromarray(clean).resize((16, 12), Image.LANCZOS))
    r = restore.superres(low, scale=4, channels=32, layers=4, iters=200, device="cpu")
    assert r.image.shape == clean.shape
    x = torch.from_numpy(r.image).permute(2, 0, 1)[None].float() / 255
    down = (Degradation(scale=4).apply(x)[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    assert psnr(down, low) > 30  # consistent with what it was given (measured: 44 dB)
    nearest = np.asarray(Image.fromarray(low).resize((64, 48), Image.NEAREST))
    assert psnr(r.image, clean) > psnr(nearest, clean) + 1  # and more than a blown-up copy (+2.5 dB)


def _mask_image(h, w):
    m = np.full((h, w), 255, np.uint8)
    m[4:8, 4:10] = 0
    return m


@pytest.mark.parametrize("form", [lambda m: m == 255, lambda m: (m // 255).astype(np.uint8), lambda m: (m // 255).astype(np.int64)])
def test_inpaint_takes_a_mask_of_bools_or_0_1_as_the_mask_image(form):
    # a 0/1 mask read as an image is black everywhere: it used to be refused as marking nothing known
    img, m = small(16, 16), _mask_image(16, 16)
    kw = dict(channels=4, iters=10, device="cpu")
    a = restore.inpaint(img, m, **kw)
    b = restore.inpaint(img, form(m), **kw)
    assert a.result.data == b.result.data and np.array_equal(a.image, b.image)


def test_inpaint_names_the_mask_in_its_errors_and_refuses_an_empty_one():
    from ddcodec.errors import ImageError
    img = small(16, 16)
    with pytest.raises(ImageError, match="mask"):
        restore.inpaint(img, np.zeros((16, 16), np.float32), channels=4, iters=5, device="cpu")
    with pytest.raises(ImageError, match="no pixel as known"):
        restore.inpaint(img, np.zeros((16, 16), bool), channels=4, iters=5, device="cpu")


def test_inpaint_keep_known_must_be_a_bool(monkeypatch):
    from ddcodec.errors import ConfigError
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    with pytest.raises(ConfigError, match="keep_known"):
        restore.inpaint(small(16, 16), _mask_image(16, 16), channels=4, iters=5, device="cpu", keep_known="no")


@pytest.mark.parametrize("task", ["denoise", "inpaint", "superres"])
def test_a_restoration_takes_the_margin_by_default_from_k9_and_its_file_decodes_to_its_image(task):
    # every task has it from k = 9 (MARGIN_MIN_K) unless told, as compression has
    img = small(24, 16)
    kw = dict(layers=3, iters=5, device="cpu")
    calls = {"denoise": lambda k=9, **m: restore.denoise(img, channels=k, **kw, **m),
             "inpaint": lambda k=9, **m: restore.inpaint(img, _mask_image(16, 24), channels=k, keep_known=False, **kw, **m),
             "superres": lambda k=9, **m: restore.superres(img, 2, channels=k, **kw, **m)}
    assert ddcodec.info(calls[task]().result.data)["arch"]["margin"] is True
    assert ddcodec.info(calls[task](k=8).result.data)["arch"]["margin"] is False
    wide, corner = calls[task](margin=True), calls[task](margin=False)
    assert (ddcodec.info(wide.result.data)["arch"]["margin"], ddcodec.info(corner.result.data)["arch"]["margin"]) == (True, False)
    assert wide.image.shape == corner.image.shape
    if task != "denoise":  # denoising's image is the fit's average, its file the distilled network
        assert np.array_equal(ddcodec.decode(wide.result.data), wide.image)


@pytest.mark.parametrize("kwargs", [dict(margin="yes"), dict(margin=True, arch="skip")])
def test_a_bad_restoration_margin_is_a_config_error_before_any_fit(kwargs, monkeypatch):
    from ddcodec.errors import ConfigError
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    with pytest.raises(ConfigError):
        restore.superres(small(16, 16), 2, channels=4, layers=3, iters=5, device="cpu", **kwargs)
