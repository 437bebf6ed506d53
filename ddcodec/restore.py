"""Restoration as a fit with a degradation operator (Ulyanov et al., DIP, sec. 4; Heckel & Hand,
sec. 4): denoise, inpaint, super-resolve. Each returns the restored image and the .ddc encoding
of the fitted network, which decodes to that same image.

Defaults follow the papers: the Deep Decoder with k=128 for restoration (its denoising
setting); the DIP skip net with 128 channels, 5 scales, lr 0.01 and input-noise
regularisation of std 1/30 (denoising) or 0.03 (inpainting, super-resolution).
"""
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

import numbers
import time

import torch

from .codec import EncodeResult, _as_array, _to_uint8, check_arguments, decode, fit_bank, planned_net, quantize_bank
from .degrade import Degradation, denoise_iterations, estimate_sigma, mask_array, mask_from_image
from .checks import flag
from .errors import ConfigError, ImageError
from .fit import ADAM_BETAS, REFERENCE_LR, FitConfig, mse_per_image, optimise
from .nets import crop
from .quant import QuantConfig
from .rate import channels_for_image

DEFAULTS = {  # arch -> (channels, layers, iterations for inpainting / super-resolution)
    "deep-decoder": (128, 6, 3000),
    "skip": (128, 5, 3000),
}
SKIP_INPUT_NOISE = {"denoise": 1 / 30, "inpaint": 0.03, "superres": 0.03}
RESTORE_QUANT = QuantConfig(qat_iters=0, round_iters=0)  # the fit's target is degraded: no need to polish it
# Denoising averages the outputs over the fit (DIP's exp_weight 0.99) at a constant learning
# rate, then distils the average back into the network so that the .ddc decodes to it.
DENOISE_AVERAGE = 0.99
# Restoration fits at DIP's learning rate: the stopping rule and the averaging were tuned at it
# (compression's default, FitConfig.lr, is larger: it converges further in its budget).
RESTORE_LR = REFERENCE_LR
DISTILL_ITERS, DISTILL_LR = 300, 0.002
# Denoising with the skip net stops by the discrepancy principle (Morozov): its 2.2 M weights
# fit the noise within a few hundred steps, at a point that a fixed budget misses by image.
# tau: on the tuning image kodim24 (sigma 25) the averaged output peaked when its MSE to the
# noisy image was 0.93 sigma_hat^2 (below 1: the clipped noise has less variance than sigma^2).
# The Deep Decoder with the margin stops so too, at the same tau, but never after its fixed
# budget (cap 1): with the margin it fits a smooth image's noise far sooner (kodim02 peaked at
# ~900 iterations, 29.9 dB, and fell to 29.1 by 2,250, short of its budget of 2,328) while kodim24 still peaks
# near it (26.58 dB at 2,000, MSE 0.91 sigma_hat^2). Without the margin its peaks fell at 0.89
# (kodim24) and 1.00 (kodim02) sigma_hat^2, no better than the budget, which it keeps.
DISCREPANCY = 0.93
DISCREPANCY_CAP = {"skip": 4, "deep-decoder": 1}  # x the fixed budget (denoise_iterations)
# The margin when not asked for (margin=None) is FitConfig's rule, as in compression: the Deep
# Decoder from k >= 9. On kodak-mini at k=128 it gained inpainting +1.43 dB, super-resolution
# +0.29 and denoising (with its discrepancy stop) +1.02 at sigma 25 and +0.17 at sigma 50.


@dataclass
class Restored:
    image: np.ndarray  # the restored uint8 image
    result: EncodeResult  # the .ddc bytes, decoding to image (for denoising: to the distilled network, close to it, README)
    iters: int  # fitting iterations used (from the stopping rule for denoising)
    sigma: float = None  # estimated noise std (0-255), denoising only


def _given(iters):
    """iters as given: None means the task's default (or denoising's rule); 0 is not a synonym
    for it, since a caller passing 0 most likely computed it by mistake."""
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1):
        raise ConfigError(f"iters must be a whole number of at least 1 (or None for the default), not {iters!r}")
    return iters


def _config(task, arch, channels, layers, iters, seed, lr, margin: Optional[bool] = None):
    if arch not in DEFAULTS:
        raise ConfigError(f"unknown architecture {arch!r} (deep-decoder or skip)")
    k, d, default_iters = DEFAULTS[arch]
    noise = SKIP_INPUT_NOISE[task] if arch == "skip" else 0.0
    extra = dict(average=DENOISE_AVERAGE, lr_floor=1.0) if task == "denoise" else {}
    # Adam with its own betas and no rollback: the stopping rules and the figures were measured
    # so. margin None: FitConfig's rule (k >= 9)
    fit = FitConfig(iters=_given(iters) or default_iters, lr=lr, seed=seed, input_noise=noise, rollback_db=0.0,
                    beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], live_first_block=False, optimizer="adam",
                    margin=None if margin is None else flag("margin", margin), **extra)
    return (k if channels is None else channels), (d if layers is None else layers), fit


def _run(img, task, deg, arch, channels, layers, iters, seed, lr, device, progress, sigma=None,
         quant: QuantConfig = RESTORE_QUANT, margin: Optional[bool] = None):
    t0 = time.perf_counter()
    k, d, fit = _config(task, arch, channels, layers, iters, seed, lr, margin)
    if channels is None and isinstance(quant, QuantConfig) and quant.target_bpp is not None and arch == "deep-decoder":
        # k from the rate target, as encode_bank chooses it: the default k=128 cannot keep to
        # most targets, which a fit of minutes would only then find (on the output's size)
        shape = img.shape if deg is None else deg.output_size(*img.shape[:2]) + img.shape[2:]
        k = channels_for_image(quant.target_bpp, shape, d)
    if task == "denoise" and not iters:  # the stopping rule, for the net as it will be (k, margin)
        fit = replace(fit, **_stopping(sigma, arch, k, d, img.shape, fit))
    check_arguments(k, d, fit, quant, progress)  # typed errors before the fit, as encode's
    if task == "denoise" and quant.target_psnr is not None:
        # the file is quantized against the fit's own average (distill), not against a clean
        # image this has not got: a PSNR target would be met against the wrong thing
        raise ConfigError("a PSNR target needs the clean image; denoising has only the noisy one (use --bpp)")
    bank = fit_bank([img], k, d, fit, device, progress, arch, deg)
    image = None
    if bank.average is not None:
        image = _to_uint8(bank.average)[0]
        distill(bank, bank.average, progress)
    res = quantize_bank(bank, quant, progress)[0]
    res.seconds = time.perf_counter() - t0
    if image is None:
        image = decode(res.data, device=res.device)
    return Restored(image, res, bank.iters, sigma)


def distill(bank, target, progress=None, iters: int = DISTILL_ITERS, lr: float = DISTILL_LR) -> None:
    """Fit the bank's networks to target (their own averaged output) from where they are, and
    make that the criterion the quantization keeps: the .ddc then decodes to the average."""
    H, W = bank.size
    bank.loss_fn = lambda out: mse_per_image(crop(bank.arch, out, H, W), target)  # noqa: E731
    optimise(bank.model, bank.z, bank.loss_fn, iters, lr, 0.05,
             progress=(lambda *a: progress("distil", *a)) if progress else None)
    with torch.no_grad():
        bank.float_out = _to_uint8(crop(bank.arch, bank.model(bank.z), H, W))


def denoise(image, arch="deep-decoder", channels=None, layers=None, iters=None, seed=0,
            lr=RESTORE_LR, device="auto", progress=None, quant: QuantConfig = RESTORE_QUANT,
            margin: Optional[bool] = None) -> Restored:
    """Fit to the noisy image and stop early: iters from the estimated noise level unless given.
    quant: how the .ddc is quantized (`ddc encode --denoise` passes its rate options)."""
    img = _as_array(image)
    return _run(img, "denoise", None, arch, channels, layers, _given(iters), seed, lr, device, progress,
                estimate_sigma(img), quant, margin=margin)


def _stopping(sigma: float, arch: str, k: int, d: int, shape: tuple, fit: FitConfig) -> dict:
    """Denoising's iterations, and its early stop (FitConfig.stop_mse) where it has one: the
    discrepancy principle stops once the averaged output is as far from the noisy image as the
    clean image is expected to be (DISCREPANCY sigma_hat^2), within a cap of the fixed budget."""
    H, W = shape[:2]
    rule = denoise_iterations(sigma, 3000, arch, H * W)
    if sigma <= 1:
        return dict(iters=rule)
    if arch == "deep-decoder" and not planned_net(arch, k, d, H, W, len(shape) == 2, fit).margin:
        return dict(iters=rule)  # in the corner: it keeps its budget
    return dict(iters=DISCREPANCY_CAP[arch] * rule, stop_mse=DISCREPANCY * (sigma / 255) ** 2)


def inpaint(image, mask, arch="deep-decoder", channels=None, layers=None, iters=None, seed=0,
            lr=RESTORE_LR, device="auto", progress=None, keep_known: bool = True,
            margin: Optional[bool] = None) -> Restored:
    """Fit to the known pixels only. mask, of the image's size: a 2-D array of bools or 0/1
    (True or 1 = known), or a mask image (an array, PIL image or path; white = known).

    keep_known: the restored image keeps every known pixel as it was and takes only the
    missing ones from the network (the .ddc, which holds only the network, decodes to the
    network's whole output: decode(result.data))."""
    img = _as_array(image)
    keep_known = flag("keep_known", keep_known)
    m = _known(mask)
    r = _run(img, "inpaint", Degradation(mask=m), arch, channels, layers, iters, seed, lr, device, progress,
             margin=margin)
    if keep_known:
        r.image = np.where(m[..., None] if img.ndim == 3 else m, img, r.image)
    return r


def _known(mask) -> np.ndarray:
    """inpaint's mask -> bool [H, W]. A 2-D array of bools or of 0/1 integers is the mask
    itself, as Degradation takes it: as an image it would be black (below the threshold of 128
    everywhere), so no mask image is read differently for it."""
    known = mask_array(mask)
    if known is not None:
        if not known.any():
            raise ImageError("the mask marks no pixel as known (True or 1 = known)")
        return known
    try:
        mask = _as_array(mask)
    except ImageError as e:  # say which argument it was: the image's own errors read the same
        raise ImageError(f"mask: {e}") from None
    return mask_from_image(mask)


def superres(image, scale=4, arch="deep-decoder", channels=None, layers=None, iters=None, seed=0,
             lr=RESTORE_LR, device="auto", progress=None, margin: Optional[bool] = None) -> Restored:
    """Fit a scale-x larger output whose Lanczos downsampling matches the image."""
    img = _as_array(image)
    return _run(img, "superres", Degradation(scale=scale), arch, channels, layers, iters, seed,
                lr, device, progress, margin=margin)


__all__ = ["Restored", "denoise", "inpaint", "superres"]
