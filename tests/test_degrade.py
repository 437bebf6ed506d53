import numpy as np
import pytest
import torch
from PIL import Image

from ddcodec.degrade import (Degradation, denoise_iterations, estimate_sigma, lanczos_downsample,
                             lanczos_kernel, mask_from_image)
from ddcodec.errors import ConfigError, ImageError
from ddcodec.metrics import psnr

from .conftest import small


@pytest.mark.parametrize("factor", [2, 3, 4, 5])
def test_lanczos_downsampler_matches_pillows_lanczos(factor):
    img = small(120, 60)
    x = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32))
    ours = lanczos_downsample(x, factor)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
    ref = np.asarray(Image.fromarray(img).resize((120 // factor, 60 // factor), Image.LANCZOS))
    assert ours.shape == ref.shape and psnr(ours, ref) > 40


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 7])
def test_each_downsampled_pixel_sits_at_its_block_centre(factor):
    # on a ramp the low-pass returns the ramp's value at the output pixel's centre, (j + 1/2)
    # factor - 1/2 in input pixels; an odd factor was once half an input pixel off
    x = torch.arange(20 * factor, dtype=torch.float64).repeat(4 * factor, 1)[None, None]
    y = lanczos_downsample(x, factor)[0, 0, 1]
    centres = (torch.arange(y.shape[0], dtype=torch.float64) + 0.5) * factor - 0.5
    assert y.shape[0] == 20 and float((y - centres)[3:-3].abs().max()) < 1e-3


def test_lanczos_kernel_sums_to_one_and_is_symmetric():
    k = lanczos_kernel(4)
    assert len(k) == 24 and abs(k.sum() - 1) < 1e-6 and np.allclose(k, k[::-1])


@pytest.mark.parametrize("sigma", [10, 25, 50])
def test_noise_estimate_is_within_15_percent(sigma):
    img = small(192, 128)
    rng = np.random.default_rng(1)
    noisy = np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)
    assert abs(estimate_sigma(noisy) - sigma) < 0.15 * sigma


def test_stopping_rule_stops_earlier_for_stronger_noise():
    assert denoise_iterations(50) < denoise_iterations(25) < denoise_iterations(10) <= 3000
    assert denoise_iterations(0.5) == 3000 and denoise_iterations(1e6) == 200


def test_skip_net_stops_far_earlier_and_later_on_larger_images():
    mini, full = 192 * 128, 768 * 512
    assert denoise_iterations(25, arch="skip", pixels=mini) == 500
    assert denoise_iterations(50, arch="skip", pixels=mini) == 250
    assert denoise_iterations(25, arch="skip", pixels=mini) < denoise_iterations(25) / 4
    assert denoise_iterations(25, arch="skip", pixels=full) == 2000
    assert denoise_iterations(25, arch="skip", pixels=100 * mini) == 3000  # capped at base


def test_mask_white_means_known_and_an_all_black_mask_is_refused():
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0] = 255
    assert mask_from_image(m).sum() == 1 and mask_from_image(m)[0, 0]
    with pytest.raises(ImageError):
        mask_from_image(np.zeros((4, 4), np.uint8))


def test_a_numpy_integer_scale_is_kept_as_a_python_int():
    d = Degradation(scale=np.int64(2))
    assert d.scale == 2 and type(d.scale) is int


@pytest.mark.parametrize("call", [
    lambda: mask_from_image(None), lambda: mask_from_image([[255, 0]]),
    lambda: mask_from_image(np.array([255, 0], np.uint8)), lambda: mask_from_image(np.full((2, 2, 3, 1), 255, np.uint8)),
    lambda: mask_from_image(np.ones((2, 2), np.float32)), lambda: estimate_sigma(None),
    lambda: estimate_sigma(np.zeros((4, 4, 2), np.uint8)),
    lambda: lanczos_downsample(torch.zeros(1, 1, 8, 8), 0), lambda: lanczos_downsample(torch.zeros(1, 1, 8, 8), 2.5),
    lambda: lanczos_downsample(torch.zeros(8, 8), 2), lambda: lanczos_downsample(np.zeros((1, 1, 8, 8)), 2),
    lambda: denoise_iterations("a"), lambda: denoise_iterations(-1.0), lambda: denoise_iterations(float("nan")),
    lambda: denoise_iterations(25, base=0), lambda: denoise_iterations(25, arch="dip"),
    lambda: denoise_iterations(25, pixels=2.5)])
def test_the_degradation_helpers_refuse_bad_arguments_with_typed_errors(call):
    with pytest.raises((ConfigError, ImageError)):
        call()


def test_mask_of_the_wrong_size_and_bad_scale_are_refused():
    with pytest.raises(ImageError):
        Degradation(mask=np.ones((3, 3), bool)).weight((4, 4), "cpu")
    with pytest.raises(ConfigError):
        Degradation(scale=0)
