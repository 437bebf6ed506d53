"""Restoration as a fit with a degradation operator (Ulyanov et al., DIP, sec. 4; Heckel & Hand,
sec. 4): denoise, inpaint, super-resolve. Each returns the restored image and the .ddc encoding
of the fitted network, which decodes to that same image.

Defaults follow the papers: the Deep Decoder with k=128 for restoration (its denoising
setting); the DIP skip net with 128 channels, 5 scales, lr 0.01 and input-noise
regularisation of std 1/30 (denoising) or 0.03 (inpainting, super-resolution).
"""
from dataclasses import dataclass

import numpy as np

from .codec import EncodeResult, _as_array, decode, encode
from .degrade import Degradation, denoise_iterations, estimate_sigma, mask_from_image
from .errors import ConfigError
from .fit import FitConfig
from .quant import QuantConfig

DEFAULTS = {  # arch -> (channels, layers, iterations for inpainting / super-resolution)
    "deep-decoder": (128, 6, 3000),
    "skip": (128, 5, 3000),
}
SKIP_INPUT_NOISE = {"denoise": 1 / 30, "inpaint": 0.03, "superres": 0.03}
RESTORE_QUANT = QuantConfig(qat_iters=0)  # the fit's target is degraded: no need to polish it


@dataclass
class Restored:
    image: np.ndarray  # the restored uint8 image, as decode(result.data) gives it
    result: EncodeResult  # the .ddc bytes and the encode figures
    iters: int  # fitting iterations used (from the stopping rule for denoising)
    sigma: float = None  # estimated noise std (0-255), denoising only


def _config(task, arch, channels, layers, iters, seed, lr):
    if arch not in DEFAULTS:
        raise ConfigError(f"unknown architecture {arch!r} (deep-decoder or skip)")
    k, d, default_iters = DEFAULTS[arch]
    noise = SKIP_INPUT_NOISE[task] if arch == "skip" else 0.0
    fit = FitConfig(iters=iters or default_iters, lr=lr, seed=seed, input_noise=noise)
    return (k if channels is None else channels), (d if layers is None else layers), fit


def _run(img, task, deg, arch, channels, layers, iters, seed, lr, device, progress, sigma=None):
    k, d, fit = _config(task, arch, channels, layers, iters, seed, lr)
    res = encode(img, k, d, fit, RESTORE_QUANT, device, progress, arch, deg)
    return Restored(decode(res.data, device=res.device), res, fit.iters, sigma)


def denoise(image, arch="deep-decoder", channels=None, layers=None, iters=None, seed=0,
            lr=0.01, device="auto", progress=None) -> Restored:
    """Fit to the noisy image and stop early: iters from the estimated noise level unless given."""
    img = _as_array(image)
    sigma = estimate_sigma(img)
    iters = iters or denoise_iterations(sigma, 3000 if arch == "deep-decoder" else 2400)
    return _run(img, "denoise", None, arch, channels, layers, iters, seed, lr, device, progress, sigma)


def inpaint(image, mask, arch="deep-decoder", channels=None, layers=None, iters=None, seed=0,
            lr=0.01, device="auto", progress=None, keep_known: bool = True) -> Restored:
    """Fit to the known pixels only; mask: any image of the same size, white = known.

    keep_known: the restored image keeps every known pixel as it was and takes only the
    missing ones from the network (the .ddc, which holds only the network, decodes to the
    network's whole output: decode(result.data))."""
    img = _as_array(image)
    m = mask_from_image(_as_array(mask))
    r = _run(img, "inpaint", Degradation(mask=m), arch, channels, layers, iters, seed, lr, device, progress)
    if keep_known:
        r.image = np.where(m[..., None] if img.ndim == 3 else m, img, r.image)
    return r


def superres(image, scale=4, arch="deep-decoder", channels=None, layers=None, iters=None, seed=0,
             lr=0.01, device="auto", progress=None) -> Restored:
    """Fit a scale-x larger output whose Lanczos downsampling matches the image."""
    img = _as_array(image)
    return _run(img, "superres", Degradation(scale=scale), arch, channels, layers, iters, seed,
                lr, device, progress)


__all__ = ["Restored", "denoise", "inpaint", "superres"]
