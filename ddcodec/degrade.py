"""Degradation operators A for restoration (Ulyanov et al., "Deep Image Prior", sec. 4):

    theta* = argmin_theta || (A(f_theta(z)) - x0) * m ||^2

identity for denoising (with a stopping rule: the net fits the image before the noise), a
mask m for inpainting, and a fixed Lanczos-3 downsampler for super-resolution (DIP compares a
Lanczos-downsampled output with the low-resolution input). The .ddc file stores the fitted
network, so it decodes to the restored image, at the higher resolution for super-resolution.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .checks import integer, keep, number
from .errors import ConfigError, ImageError
from .images import check_image

LANCZOS_A = 3


@dataclass(frozen=True)
class Degradation:
    scale: int = 1  # super-resolution factor: the output is scale x the input size
    mask: np.ndarray = None  # bool [H, W]: True where the input pixel is known

    def __post_init__(self):
        keep(self, "scale", integer("scale", self.scale, 1, 16))  # a numpy integer as int: layers_for uses bit_length
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, np.ndarray) or m.ndim != 2:
                raise ConfigError("mask must be a 2-D array [H, W], True (or 1) where the pixel is known")
            known = mask_array(m)
            if known is None:
                raise ConfigError("mask must hold bools or 0/1 (see mask_from_image for a mask image)")
            object.__setattr__(self, "mask", known)
            if not self.mask.any():
                raise ConfigError("the mask marks no pixel as known")

    def output_size(self, h: int, w: int) -> tuple:
        return h * self.scale, w * self.scale

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return lanczos_downsample(x, self.scale) if self.scale > 1 else x

    def weight(self, shape, device) -> torch.Tensor:
        if self.mask is None:
            return None
        if self.mask.shape != tuple(shape):
            raise ImageError(f"mask is {self.mask.shape[1]}x{self.mask.shape[0]}, "
                             f"the image {shape[1]}x{shape[0]}")
        return torch.from_numpy(self.mask.astype(np.float32))[None, None].to(device)


def lanczos_kernel(factor: int, a: int = LANCZOS_A) -> np.ndarray:
    """A Lanczos-a low-pass for downsampling by factor, summing to 1, centred on the output
    pixel's centre: 2*a*factor taps for an even factor, where that centre falls between two
    input pixels, one more for an odd factor, where it falls on one (2*a*factor taps there
    shifted the output by half an input pixel)."""
    n = 2 * a * factor + factor % 2
    d = (np.arange(n) - (n - 1) / 2) / factor
    k = np.sinc(d) * np.sinc(d / a)
    return (k / k.sum()).astype(np.float32)


def lanczos_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H/factor, W/factor], separable, output pixel centres aligned."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ConfigError("lanczos_downsample takes a float tensor [N, C, H, W]")
    factor = integer("factor", factor, 1, 16)
    k = torch.from_numpy(lanczos_kernel(factor)).to(x)
    pad = LANCZOS_A * factor - factor // 2
    n, c, h, w = x.shape
    mode = "reflect" if min(h, w) > pad else "replicate"
    y = F.pad(x, (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y.reshape(n * c, 1, *y.shape[2:]), k.view(1, 1, 1, -1), stride=(1, factor))
    y = F.conv2d(y, k.view(1, 1, -1, 1), stride=(factor, 1))
    return y.reshape(n, c, *y.shape[2:])[..., :h // factor, :w // factor]


def mask_array(m):
    """A 2-D array of bools, or of integers that are all 0 or 1, as a bool mask [H, W]; None for
    anything else. 0/1 integers are taken as bools, since 255 would index rather than mask."""
    if not isinstance(m, np.ndarray) or m.ndim != 2:
        return None
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all():
        return m.astype(bool)
    return None


def mask_from_image(mask_img: np.ndarray) -> np.ndarray:
    """Any mask image (uint8 [H, W] or [H, W, 3]) -> bool [H, W]; white (>= 128 in grayscale)
    means known."""
    try:
        mask_img = check_image(mask_img)
    except ImageError as e:
        raise ImageError(f"mask {e}") from None
    m = mask_img if mask_img.ndim == 2 else mask_img.mean(axis=2)
    known = m >= 128
    if not known.any():
        raise ImageError("the mask marks no pixel as known (white = known)")
    return known


def estimate_sigma(img: np.ndarray) -> float:
    """Gaussian noise std on the 0-255 scale, from the median absolute finest diagonal Haar
    coefficient (Donoho's MAD estimator): image content barely reaches that band."""
    x = check_image(img).astype(np.float64)
    x = x[..., None] if x.ndim == 2 else x
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return 0.0
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745)


MINI_PIXELS = 192 * 128  # the size the rules were tuned at (kodak-mini)


def denoise_iterations(sigma: float, base: int = 3000, arch: str = "deep-decoder",
                       pixels: int = MINI_PIXELS) -> int:
    """The stopping rule: the iteration budget for noise of std sigma (0-255 scale), at most
    base. The net fits structure first and noise later, and later the weaker the noise is.

    Deep Decoder (k=128, output average): the best iterate on the tuning image kodim24 was
    2,250 at sigma 25 and 750 at sigma 50, hence 2250 (25 / sigma)^log2(3); on the benchmark
    images it lands within 0.2 dB of their own best (benchmarks/NOTES.md).

    DIP skip net (2.2 M weights, many more than pixels, so it fits noise far sooner): the best
    averaged iterate on kodim24 was ~500 at sigma 25 and ~250 at sigma 50, hence 500 (25 /
    sigma). Its time to fit noise grows with the pixels it must fit; the rule scales it with
    sqrt(pixels / 192x128), which is an assumption: it gives ~2,000 at 768x512, the order of
    DIP's own full-size budgets, but only the 192x128 point was measured."""
    sigma = number("sigma", sigma, 0, math.inf)
    base = integer("base", base, 1, 10**9)
    pixels = integer("pixels", pixels, 0, 2**62)
    if arch not in ("deep-decoder", "skip"):
        raise ConfigError(f"arch must be 'deep-decoder' or 'skip', got {arch!r}")
    if sigma <= 1:
        return base
    if arch == "skip":
        n = 500 * (25 / sigma) * math.sqrt(max(pixels, 1) / MINI_PIXELS)
        return int(min(base, max(100, n)))
    return int(min(base, max(200, 2250 * (25 / sigma) ** math.log2(3))))


__all__ = ["Degradation", "lanczos_downsample", "mask_from_image", "estimate_sigma",
           "denoise_iterations"]
