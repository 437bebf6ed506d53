"""PSNR and bpp, always on what a user gets: the 8-bit decoded image and the real file size."""
import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images over all pixels and channels (PSNR-RGB for colour)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def bpp(nbytes: int, width: int, height: int) -> float:
    """Bits per pixel of a file of nbytes for a width x height image."""
    return 8.0 * nbytes / (width * height)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two uint8 images (pytorch-msssim, a benchmark extra)."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    def t(x):
        x = x[..., None] if x.ndim == 2 else x
        return torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]

    # pytorch-msssim needs the smaller side > (win - 1) * 16 for its 5 scales: shrink the
    # Gaussian window for small images (11 at full Kodak size, 7 at 192x128)
    small = min(a.shape[:2])
    win = 11
    while win > 3 and (win - 1) * 16 >= small:
        win -= 2
    if (win - 1) * 16 >= small:
        return float("nan")
    return float(_ms_ssim(t(a), t(b), data_range=255, win_size=win))
