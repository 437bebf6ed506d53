"""Quantization: every tensor becomes integers times a per-tensor step.

Steps lie on a grid 2^(e/8) (e a small signed integer stored in the file), as Cool-chic picks
per-module steps from powers of two: exact in float32 on every machine, and one byte each.

Step choice follows high-rate theory. Rounding tensor t with step s adds output MSE of about
S_t s^2 / 12 and saves about n_t log2(s) bits, so minimising D + lambda R gives
s_t = c * sqrt(n_t / S_t). S_t (sensitivity) is measured by perturbing each tensor once; the
single scale c is then searched (on real rounded weights) for the largest c whose PSNR loss
stays within QuantConfig.max_loss_db, the knob that trades distortion for rate.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional

import numpy as np
import torch

from .checks import integer, keep as keep_checked, number
from .errors import ConfigError

# 2^(j/8) for j = 0..7, as exact float32 literals: the decoder must not call pow().
_ROOTS = np.array([float.fromhex(h) for h in (
    "0x1.0p+0", "0x1.172b84p+0", "0x1.306fe0p+0", "0x1.4bfdaep+0",
    "0x1.6a09e6p+0", "0x1.8ace54p+0", "0x1.ae89fap+0", "0x1.d5818ep+0")], dtype=np.float32)
STEP_CODE_MIN, STEP_CODE_MAX = -200, 40  # steps from 2^-25 to 32


@dataclass(frozen=True)
class QuantConfig:
    max_loss_db: float = 0.05  # PSNR the rounding may cost before fine-tuning; raise for rate
    # Quantization-aware fine-tuning after the step search: Adam with straight-through rounding,
    # ending on the best rounded iterate. Its best came within the first ~30 steps and later
    # steps only wandered, and a smaller step gave more: from 300 steps at 0.002 to 100 at
    # 1e-4, +0.03 to +0.10 dB at the same bytes on 24 kodak-mini images at 0.15-1.0 bpp and
    # the default point, every image better (benchmarks/qat.py), for a third of the steps.
    qat_iters: int = 100
    qat_lr: float = 1e-4
    # Learned rounding after it (ddcodec.adaround: AdaRound), on the final steps: each weight
    # picks the integer below or above, against the image's loss. None: a third of the fit's
    # iterations (1,000 for the default 3,000; 300 or 500 gained little on kodak-mini); 0: the
    # nearest integer.
    round_iters: Optional[int] = None
    round_lr: float = 0.01
    round_weight: float = 30.0  # the regulariser's lambda, against a loss of 1 at the nearest rounding
    search_rounds: int = 12  # bisection steps on log2(c)
    target_bpp: Optional[float] = None  # rate control: the PSNR budget is searched to fit this
    target_psnr: Optional[float] = None  # or: the budget is what the fit has above this PSNR

    def __post_init__(self):
        keep = partial(keep_checked, self)  # checked, and kept as Python's own int and float
        keep("max_loss_db", number("max_loss_db", self.max_loss_db, 0, 40))
        keep("qat_iters", integer("qat_iters", self.qat_iters, 0, 1_000_000))
        keep("qat_lr", number("qat_lr", self.qat_lr, 0, 1, lo_open=True))
        if self.round_iters is not None:
            keep("round_iters", integer("round_iters", self.round_iters, 0, 1_000_000))
        keep("round_lr", number("round_lr", self.round_lr, 0, 10, lo_open=True))
        keep("round_weight", number("round_weight", self.round_weight, 0, 1e6))
        keep("search_rounds", integer("search_rounds", self.search_rounds, 1, 60))
        if self.target_bpp is not None:
            keep("target_bpp", number("target bpp", self.target_bpp, 0, 64, lo_open=True))
        if self.target_psnr is not None:
            keep("target_psnr", number("target PSNR (dB)", self.target_psnr, 0, 100, lo_open=True))
        if self.target_bpp is not None and self.target_psnr is not None:
            raise ConfigError("give a target bpp or a target PSNR, not both")


def rounding_steps(quant: QuantConfig, fit_iters: int) -> int:
    """The learned rounding's steps for a fit of fit_iters iterations (QuantConfig.round_iters)."""
    return fit_iters // 3 if quant.round_iters is None else quant.round_iters


def step_from_code(code) -> np.ndarray:
    """2^(code/8) in float32, exactly: a table lookup and a power-of-two scaling."""
    code = np.asarray(code, dtype=np.int64)
    return np.ldexp(_ROOTS[code % 8], (code // 8).astype(np.int32)).astype(np.float32)


def code_from_step(step) -> np.ndarray:
    code = np.round(8 * np.log2(np.maximum(np.asarray(step, dtype=np.float64), 1e-30)))
    return np.clip(code, STEP_CODE_MIN, STEP_CODE_MAX).astype(np.int64)


def quantize(t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """round(t / step) as integers; step broadcasts over the bank dimension."""
    return torch.round(t / _bank_view(step, t))


def dequantize(q: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return q * _bank_view(step, q)


def straight_through(params, steps):
    """Rounded values forward, identity gradient backward (quantization-aware training)."""
    return [p + (dequantize(quantize(p, s), s) - p).detach() for p, s in zip(params, steps)]


def _bank_view(step: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return step.view(-1, *([1] * (t.dim() - 1)))


def probe_generators(bank: int, device) -> list:
    """One generator per member for sensitivities' probe noise, each seeded alike: a member
    draws the noise it would draw alone, so its steps do not depend on the bank it is in (one
    generator for the whole bank gave member 0 different noise in a bank of 2 than alone)."""
    return [torch.Generator(device=device).manual_seed(PROBE_SEED) for _ in range(bank)]


PROBE_SEED = 1234


@torch.no_grad()
def sensitivities(model, z, rel: float = 0.02, view=None) -> torch.Tensor:
    """S [T, B]: output MSE added per unit of uniform rounding-noise variance in each tensor.
    view(output) -> the image's pixels of it (nets.crop): the canvas's unfitted rest counts for nothing."""
    params = [t for _, t in model.named_tensors()]
    view = view or (lambda out: out)
    ref = view(model(z))
    gens = probe_generators(params[0].shape[0], z.device)  # the bank, as the tensors hold it
    out = []
    for i, p in enumerate(params):
        amp = rel * p.flatten(1).abs().amax(1).clamp_min(1e-8)  # [B]
        u = torch.stack([torch.rand(p.shape[1:], generator=g, device=p.device) for g in gens])
        noise = (u - 0.5) * _bank_view(amp, p)
        trial = list(params)
        trial[i] = p + noise
        dmse = (view(model(z, trial)) - ref).pow(2).flatten(1).mean(1)
        # sum over the tensor's n elements of dMSE/d(var); var of U(-a/2, a/2) is a^2/12
        out.append(dmse / (amp**2 / 12).clamp_min(1e-30))
    return torch.stack(out).clamp_min(1e-12)


@torch.no_grad()
def search_steps(model, z, loss_fn, cfg: QuantConfig, loss_db=None, sens=None, view=None) -> np.ndarray:
    """Step codes [T, B] for the largest scale c whose PSNR loss is within cfg.max_loss_db
    (or loss_db [B], one budget per bank member). sens: sensitivities(), if already measured;
    else measured on view(output) (sensitivities)."""
    params = [t for _, t in model.named_tensors()]
    n = torch.tensor([p[0].numel() for p in params], dtype=torch.float64, device=z.device)
    sens = (sensitivities(model, z, view=view) if sens is None else sens).double()
    shape = (n[:, None] / sens).sqrt()  # [T, B], step per unit c
    base = loss_fn(model(z)).double()  # [B], mse of the float net
    db = torch.as_tensor(cfg.max_loss_db if loss_db is None else loss_db, dtype=torch.float64, device=z.device)
    allowed = base * (10 ** (db / 10) - 1)
    c_pred = (12 * allowed / n.sum()).clamp_min(1e-30).sqrt()
    lo, hi = torch.log2(c_pred) - 6, torch.log2(c_pred) + 6
    floor, ceil = _code_range(params)
    clamp = lambda c: np.clip(_codes(shape, 2.0**c), floor, ceil)  # noqa: E731
    within = lambda codes: (loss_fn(model(z, rounded(params, codes))).double() <= base + allowed).cpu().numpy()  # noqa: E731
    best = clamp(lo)
    found = np.zeros(best.shape[1], dtype=bool)
    for _ in range(cfg.search_rounds):
        mid = (lo + hi) / 2
        codes = clamp(mid)
        ok = within(codes)
        best, found = np.where(ok[None, :], codes, best), found | ok
        ok = torch.from_numpy(ok).to(lo.device)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    if not found.all():
        best = _finer_until_within(clamp, floor, lo, best, found, within)
    return best


def _finer_until_within(clamp, floor, lo, best, found, within) -> np.ndarray:
    """For members the search never saw within budget, halve c in steps of 2^6 until the
    rounded net is (or every code reaches the floor, the finest the coder takes). The step rule
    rests on a small-perturbation sensitivity; a tensor that probe finds all but inert (e.g.
    the first block on a 2x1 input, where the normalisation hides small changes) gets a step
    larger than its weights, and rounding them all to zero is no small perturbation."""
    codes = best
    for _ in range(40):
        ok = within(codes)
        best, found = np.where(ok[None, :] & ~found[None, :], codes, best), found | ok
        if found.all() or (codes <= floor).all():
            break
        lo = lo - 6
        codes = clamp(lo)
    return np.where(found[None, :], best, floor)


def code_floor(params) -> np.ndarray:
    """[T, B] the smallest step codes whose integers span under the entropy coder's alphabet."""
    return _code_range(params)[0]


def _code_range(params):
    """[T, B] floor and ceiling codes. Floor: the smallest codes whose integers span under the
    entropy coder's alphabet limit. Ceiling: a step no larger than the tensor's largest weight,
    so rounding keeps at least that weight; a coarser step zeroes the whole tensor, which the
    sensitivity probe cannot foresee (see _finer_until_within)."""
    amax = torch.stack([p.detach().flatten(1).abs().amax(1) for p in params]).cpu().double().numpy()
    amax = np.maximum(amax, 1e-30)
    # and never below the finest code a file can hold: a tensor of weights under ~8e-4 (or of
    # zeros) would get a floor the writer refuses, and a search stepping down to it would fail
    floor = np.maximum(np.ceil(8 * np.log2(amax / 30000)).astype(np.int64) + 1, STEP_CODE_MIN)
    ceil = np.maximum(np.floor(8 * np.log2(amax)).astype(np.int64), floor)
    return floor, ceil


def _codes(shape: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    return code_from_step((shape * c[None, :]).cpu().numpy())


def steps_tensor(codes: np.ndarray, device) -> list:
    return [torch.from_numpy(step_from_code(row)).to(device) for row in codes]


def rounded(params, codes: np.ndarray) -> list:
    steps = steps_tensor(codes, params[0].device)
    return [dequantize(quantize(p, s), s) for p, s in zip(params, steps)]
