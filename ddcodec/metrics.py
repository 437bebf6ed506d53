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

    small = min(a.shape[:2])
    # pytorch-msssim needs > (win-1)*2^4 pixels per side for 5 scales; fewer scales otherwise
    if small > 160:
        return float(_ms_ssim(t(a), t(b), data_range=255))
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    levels = max(1, min(5, int(np.log2(max(small, 1) / 10)) ))
    w = torch.tensor(weights[:levels]) / sum(weights[:levels])
    return float(_ms_ssim(t(a), t(b), data_range=255, weights=w.tolist(), win_size=min(11, small // 2 ** (levels - 1) | 1)))
