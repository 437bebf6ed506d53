"""Rate control: a bits-per-pixel or PSNR target instead of a PSNR budget.

The quantization budget (QuantConfig.max_loss_db) sets the rate of a fitted network: a larger
budget gives coarser steps and fewer bytes. For a target bpp, each bank member's budget is
bisected in log space until its file is the largest that fits; the fit is done once. The
channel count k sets where that search starts: channels_for_bpp picks it from the target.
For a target PSNR the budget is simply what the fit reached above it.
"""
import math

import numpy as np
import torch

from .errors import ConfigError
from .nets import Architecture, layers_for, param_count
from .quant import QuantConfig, search_steps, sensitivities

LOSS_RANGE_DB = (0.005, 6.0)  # budgets searched; beyond ~2 dB a smaller k is the better trade (NOTES.md)
# The budget is relative to the fit, so a member whose fit is far better than its rate can keep
# may need more than LOSS_RANGE_DB's 6 dB to reach the rate at all: a denoised network distilled
# to its own average (restore.distill), which it matches to ~47 dB (64x64 at 1.5-3 bpp with
# the margin), or a flat tile on the allocation's floor (full-size kodim09 at 0.25 bpp: a sky
# tile of 256x171 given 274 bytes, k=6, fitted to 33.9 dB, 280 bytes at 6 dB and 176 at 20).
# Such a member's search widens to WIDEST_LOSS_DB before the target is called out of reach.
WIDEST_LOSS_DB = 20.0
ROUNDS = 9
# kodak-mini (benchmarks/NOTES.md): with Adam the measured (k, budget) hull ran at 7.5-9 bits
# per weight, header included, and 8 won. Muon fits larger nets better: at 7 (one or two
# channels more) the profile gained +0.09 to +0.36 dB at 0.2-0.75 bpp (41 of 48 image-points
# better), level at 1.0, where 6 (k=25) lost 0.4 dB and 9 (k=20) 0.25 on the same 8 images.
BITS_PER_PARAM = 7.0


def channels_for_bpp(bpp: float, height: int, width: int, layers: int = 6, out_channels: int = 3) -> int:
    """The largest k whose stored (folded) weights, at BITS_PER_PARAM each, fit bpp * pixels bits."""
    budget = bpp * height * width / BITS_PER_PARAM
    k = 1
    while k < 1024 and param_count(Architecture("deep-decoder", k + 1, layers, out_channels, folded=True)) <= budget:
        k += 1
    return k


def channels_for_image(bpp: float, shape, layers: int = 6) -> int:
    """channels_for_bpp for an image array's shape ([H, W] or [H, W, 3]), at the blocks the
    fit will have (nets.layers_for)."""
    return channels_for_bpp(bpp, shape[0], shape[1], layers_for(layers, shape[0], shape[1]), 1 if len(shape) == 2 else 3)


@torch.no_grad()
def budgets_for_rate(model, z, loss_fn, quant: QuantConfig, pixels: int, write, targets=None,
                     view=None) -> np.ndarray:
    """[B] PSNR budgets (dB) whose files are the largest within quant.target_bpp, or within
    targets[b] bpp for member b (the tiles of an image each get their share). The search runs
    over LOSS_RANGE_DB, and up to WIDEST_LOSS_DB for a member that cannot reach its rate within it.

    write(b, codes_b) -> the bytes bank member b would get with step codes codes_b.
    view(output) -> the image's pixels of the network's output (nets.crop), for the sensitivities."""
    sens = sensitivities(model, z, view=view)
    limit = np.asarray(targets if targets is not None else [quant.target_bpp] * z.shape[0]) * pixels / 8
    B = z.shape[0]
    lo = np.full(B, math.log(LOSS_RANGE_DB[0]))
    hi = np.full(B, math.log(LOSS_RANGE_DB[1]))
    fits_at_hi = _fits(model, z, loss_fn, quant, np.exp(hi), sens, write, limit)
    if not fits_at_hi.all():  # only the members short of their rate search the wider range
        hi = np.where(fits_at_hi, hi, math.log(WIDEST_LOSS_DB))
        fits_at_hi = _fits(model, z, loss_fn, quant, np.exp(hi), sens, write, limit)
    if not fits_at_hi.all():
        weights = sum(t[0].numel() for _, t in model.named_tensors())
        raise ConfigError(f"cannot reach {np.min(limit) * 8 / pixels:.4g} bpp with {weights} weights per image; "
                          "use a larger target (or a smaller -k where one was given)")
    if _fits(model, z, loss_fn, quant, np.exp(lo), sens, write, limit).all():
        return np.exp(lo)  # even the finest budget fits: the rate is not the limit
    for _ in range(ROUNDS):
        mid = (lo + hi) / 2
        ok = _fits(model, z, loss_fn, quant, np.exp(mid), sens, write, limit)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return np.exp(hi)


def _fits(model, z, loss_fn, quant, loss_db, sens, write, limit) -> np.ndarray:
    codes = search_steps(model, z, loss_fn, quant, loss_db, sens)
    return np.array([len(write(b, codes[:, b])) <= limit[b] for b in range(z.shape[0])])


@torch.no_grad()
def budgets_for_psnr(model, z, loss_fn, target_psnr: float) -> tuple:
    """([B] budgets, [B] shortfalls): each member's float PSNR minus the target, and for a
    member whose fit is below the target the message saying so (None for the others): one
    member's shortfall is its own failure, not its bank-mates'."""
    fitted = (-10 * torch.log10(loss_fn(model(z)).double().clamp_min(1e-12))).cpu().numpy()
    short = [f"the fit reached {p:.2f} dB, below the target {target_psnr} dB; use a larger -k or more --iters"
             if p < target_psnr else None for p in fitted]
    return np.maximum(fitted - target_psnr, LOSS_RANGE_DB[0]), short
