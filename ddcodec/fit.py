"""Fitting: theta* = argmin_theta E(A(f_theta(z)), x0) for a bank of B images at once.

Adam is elementwise, Muon (ddcodec.muon) orthogonalises each member's matrices on their own,
and the loss is a sum of per-image means, so the B fits in a bank are independent: the same result as B separate runs, at one launch per op instead of B.
The loop keeps each member's best iterate (the loss can spike), sends a member that blows up
back to it (rollback_db), and serves quantization-aware fine-tuning too, with rounding applied
through a transform.
"""
import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Union

import numpy as np
import torch

from .checks import integer, keep as keep_checked, number
# the compile machinery lives in compiling.py; these names stay importable from here, where
# FitConfig's compile option and optimise use them
from .compiling import (COMPILE_PRESETS, FUSED_OPTIONS, GRAPH_MODES, TAIL_MAX_CHANNELS, TORCH_MODES,  # noqa: F401
                        TRITON_PRESETS, _EagerOnFailure, compiled, fell_back, tail_supported)
from .errors import ConfigError
from .muon import MuonAdam


# The least width that fits better with a margin (FitConfig.margin_for): on kodak-mini k=6 and 8 lost
MARGIN_MIN_K = 9


@dataclass(frozen=True)
class FitConfig:
    iters: int = 3000  # the team's design notes measured 3,000; the reference uses 5,000-20,000
    lr: Optional[float] = None  # None: default_lr(k), from 0.05 for small nets to 0.01 (Muon's steps are scaled to Adam's)

    lr_floor: float = 0.05  # cosine decay to lr*lr_floor: late steps polish instead of jump
    input_noise: float = 0.0  # std of noise added to z each step (DIP's regulariser), decays
    precision: str = "fp32"  # "tf32" or "bf16" (autocast) trade exactness for GPU speed
    seed: int = 0  # seeds the initial weights and the input z
    average: float = 0.0  # restoration: keep an exponential average of the outputs (DIP: 0.99)
    # torch.compile the network: fuses the upsample/ReLU/norm chain. "auto": compile a
    # compression fit when its work pays for the compile (compile_for). A name from
    # COMPILE_PRESETS compiles with those settings ("fused", "reduce-overhead", ...).
    compile: Union[bool, str] = "auto"
    # Stop once every member's loss (that of the output average, when one is kept) is at most
    # this MSE (0-1 scale), checked every STOP_EVERY steps; iters is then a cap. Denoising with
    # the skip net sets it to 0.93 times the estimated noise variance, the discrepancy principle
    # (restore.denoise); the Deep Decoder's denoising uses its iteration budget instead.
    stop_mse: float = 0.0
    # A member whose loss climbs this many dB above its best goes back to its best iterate
    # (optimise's rollback_db); None: ROLLBACK_DB when compressing, off elsewhere (restoration
    # was tuned without it), 0: off.
    rollback_db: Optional[float] = None
    # Adam's moment decays; None: BETA1_COMPRESSION / BETA2_COMPRESSION when compressing,
    # Adam's own 0.9 / 0.999 elsewhere (restoration's stopping rules were tuned with them).
    beta1: Optional[float] = None
    beta2: Optional[float] = None
    # Start the Deep Decoder with every first-block channel alive (nets.DeepDecoder); None: on
    # when compressing with no more channels than the input has pixels, off elsewhere
    # (live_first_block_for says why).
    live_first_block: Optional[bool] = None
    # "adam", or "muon" (ddcodec.muon: Muon for the blocks' k x k convolutions, Adam for the
    # rest); None: muon when compressing with the Deep Decoder (where it was measured), adam
    # elsewhere (restoration's stopping rules were tuned with it).
    optimizer: Optional[str] = None
    # Fit the image as the centre of a larger canvas (nets.Architecture.margin, format 5), so
    # that its edge pixels are not the network's; None: on for the Deep Decoder at
    # k >= MARGIN_MIN_K, compressing or restoring (margin_for says why), off for the skip net.
    margin: Optional[bool] = None

    def __post_init__(self):
        keep = partial(keep_checked, self)  # checked, and kept as Python's own int and float
        keep("iters", integer("iters", self.iters, 0, 10_000_000))
        if self.lr is not None:
            keep("lr", number("lr", self.lr, 0, 1, lo_open=True))
        keep("lr_floor", number("lr_floor", self.lr_floor, 0, 1))
        keep("input_noise", number("input_noise", self.input_noise, 0, 10))
        keep("seed", integer("seed", self.seed, 0, 2**64 - 1))
        keep("stop_mse", number("stop_mse", self.stop_mse, 0, 1, hi_open=True))
        keep("average", number("average", self.average, 0, 1, hi_open=True))
        if self.rollback_db is not None:
            keep("rollback_db", number("rollback_db", self.rollback_db, 0, 100))
        for name in ("beta1", "beta2"):
            if getattr(self, name) is not None:
                keep(name, number(name, getattr(self, name), 0, 1, hi_open=True))
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ConfigError(f"precision must be fp32, tf32 or bf16, got {self.precision!r}")
        if isinstance(self.compile, np.bool_):  # numpy's bool as Python's, as checks.flag takes it
            keep("compile", bool(self.compile))
        if not (isinstance(self.compile, bool) or self.compile == "auto" or self.compile in COMPILE_PRESETS):
            raise ConfigError(f"compile must be True, False, 'auto' or one of {', '.join(COMPILE_PRESETS)}, "
                              f"got {self.compile!r}")
        if self.optimizer not in (None,) + OPTIMIZERS:
            raise ConfigError(f"optimizer must be None or one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("live_first_block", "margin"):
            if not (getattr(self, name) is None or isinstance(getattr(self, name), bool)):
                raise ConfigError(f"{name} must be None, True or False, got {getattr(self, name)!r}")

    def lr_for(self, channels: int, compression: bool = True) -> float:
        """The learning rate to fit at: lr if set, else the width rule for compressing with
        the Deep Decoder (where it was measured) and the reference's rate for anything else
        (the skip net, restoration)."""
        if self.lr is not None:
            return self.lr
        return default_lr(channels) if compression else REFERENCE_LR

    def optimizer_for(self, compression: bool = True) -> str:
        if self.optimizer is not None:
            return self.optimizer
        return "muon" if compression else "adam"

    def margin_for(self, channels: int = MARGIN_MIN_K) -> bool:
        """Whether the image is the centre of a canvas with a margin. The Deep Decoder fits its
        output's edge poorly: without a margin the outermost pixels' squared error was 5-7x the
        image's mean on kodak-mini, and the seams of full-size tiles had 1.5-2.7x on the sides
        where the image met the canvas's edge and none on the side that had 21 spare pixels.
        With one the kodak-mini profile gained +0.22 / +0.23 / +0.48 / +0.59 / +0.89 / +1.01 dB
        at 0.2 ... 1.0 bpp (k = 9-23, the same rate; BD-rate against JPEG -19.2 % -> -25.6 %),
        for 1.46x the pixels a step at 192x128: all of it in the 8 pixels next to the edge
        (+2.9 dB there at 0.5 bpp), while the interior lost 0.2 dB. At k = 6 and 8 (0.1 and
        0.15 bpp) it lost 0.38 and 0.29 dB, so narrower nets keep the corner (MARGIN_MIN_K).
        Restoration at k=128 (kodak-mini): inpainting +1.43 dB, super-resolution +0.29, each
        image better; denoising +1.02 at sigma 25 with its own stop (restore.DISCREPANCY)."""
        if self.margin is not None:
            return self.margin
        return channels >= MARGIN_MIN_K

    def rollback_for(self, compression: bool = True) -> float:
        if self.rollback_db is not None:
            return self.rollback_db
        return ROLLBACK_DB if compression else 0.0

    def live_first_block_for(self, compression: bool, channels: int, input_pixels: int) -> bool:
        """Whether the fit starts with every first-block channel alive. Block 0's features are
        k channels over the input's h x w pixels, so they span at most h*w dimensions. With
        k <= h*w the live start doubles what block 0 can carry (kodak-mini, k <= 21 on 6x4 = 24
        pixels: +0.1 to +0.8 dB); with k > h*w the extra live channels are linearly dependent
        and the fit got worse (k=64 on 24 pixels: -0.26 to -0.52 dB at equal rate). Restoration
        keeps torch's init: its stopping rules were tuned with it."""
        if self.live_first_block is not None:
            return self.live_first_block
        return compression and channels <= input_pixels

    def compile_for(self, device: torch.device, compression: bool, work: float) -> Union[bool, str]:
        """Whether a fit goes through torch.compile (a preset's name: yes, with its settings).
        work: pixels x channels x iterations of the bank. On the CPU the fused kernels ran 1.8-2.1x faster than eager (one thread,
        192x128 k=16 up to nine 256x171 tiles at k=22), and a new shape compiles in ~3-20 s,
        so "auto" compiles once the eager fit would take about a minute (COMPILE_WORK). On an
        H200 (benchmarks/speed.py) compiling took a 768x512 k=64 step from 9.33 to 3.69 ms
        alone and from 3.98 to 2.05 ms per image in a bank of 18 (TF32 forwards; their
        backward ran in fp32 then), within 0.05 dB,
        after a compile of ~10-25 s: "auto" compiles from about one such image's whole fit
        (COMPILE_WORK_GPU). compression is fit_bank's: a fit to the whole image, which the
        Deep Decoder's denoising is too (its discrepancy stop reads the MSE, not the rounding);
        inpainting, super-resolution and the skip net keep eager kernels."""
        if self.compile != "auto":
            return self.compile
        return compression and work >= (COMPILE_WORK if device.type == "cpu" else COMPILE_WORK_GPU)

    def schedule(self, channels: int, compression: bool = True) -> dict:
        """optimise's keyword arguments for this recipe: the optimiser, the learning rate and
        its floor, the rollback and Adam's betas, each by its rule for compression or anything
        else."""
        return dict(lr=self.lr_for(channels, compression), lr_floor=self.lr_floor,
                    rollback_db=self.rollback_for(compression), betas=self.betas_for(compression),
                    optimizer=self.optimizer_for(compression))

    def betas_for(self, compression: bool = True) -> tuple:
        default = (BETA1_COMPRESSION, BETA2_COMPRESSION) if compression else ADAM_BETAS
        return (default[0] if self.beta1 is None else self.beta1,
                default[1] if self.beta2 is None else self.beta2)


# The learning rate that fits best in 3,000 steps depends on the width (benchmarks/NOTES.md):
# for k = 8-21, 0.05 beat the reference's 0.01 by 0.4-1.1 dB; at k = 64 it lost 0.6 dB to it.
# Between k = 21 and 64 the rule interpolates log-linearly (not measured there).
LR_SMALL, LR_LARGE, K_SMALL, K_LARGE = 0.05, 0.01, 21, 64
REFERENCE_LR = 0.01  # DIP's and the Deep Decoder paper's rate
# At lr 0.05 a fit can blow up (kodim02 mini, k=15: 27.2 -> 21.4 dB in one check) and never
# regain its basin; a blow-up is a jump of several dB, ordinary noise a few tenths.
ROLLBACK_DB = 3.0
# Less momentum fits compression nets better: kodak-mini, 8 images at lr 0.05, +0.2 dB at
# 0.5-0.75 bpp and level (within the seed-to-seed spread) at 0.1-0.2 bpp, BD-rate against JPEG
# -20.1 % -> -21.2 %; k=64 at lr 0.01, +0.2 dB for 3 % less rate. A shorter memory of the
# squared gradients (beta2 0.99) then adds +0.2 dB at 0.75-1.0 bpp: -21.2 % -> -22.7 %
# (benchmarks/NOTES.md).
BETA1_COMPRESSION, BETA2_COMPRESSION = 0.8, 0.99
ADAM_BETAS = (0.9, 0.999)
OPTIMIZERS = ("adam", "muon")


def default_lr(channels: int) -> float:
    if channels <= K_SMALL:
        return LR_SMALL
    if channels >= K_LARGE:
        return LR_LARGE
    t = math.log(channels / K_SMALL) / math.log(K_LARGE / K_SMALL)
    return LR_SMALL * (LR_LARGE / LR_SMALL) ** t


# Eager CPU fits cost about 0.03-0.05 us per pixel, channel and step (one thread), and
# compiling saves about half of that; at 2e9 the saving is ~30 s, above a cold compile.
COMPILE_WORK = 2e9
# On a GPU a compiled full-size k=64 step saves ~5.6 ms alone (H200, TF32), after a compile of
# ~10-25 s when nothing is cached. The fine-tuning now runs the fit's compilation (compiling.compiled),
# so one full-size image's default fit and fine-tuning, 3,100 steps, save ~17 s: about even
# with a cold compile, a clear saving once the compile is cached (every later run). 7e10 pixels
# x k x fit steps is below that fit's 7.5e10 (8e10, before, was above it, so a single
# full-size image fitted eagerly, against the rule's own intent).
COMPILE_WORK_GPU = 7e10
REPORT_EVERY = 10
STOP_EVERY = 10  # an early-stop test reads a GPU value: not every step
ROLLBACK_EVERY = 50  # likewise the blow-up test
Progress = Callable[[int, int, float, float], None]  # (iteration, total, loss, psnr)


def mse_per_image(out: torch.Tensor, target: torch.Tensor, weight=None) -> torch.Tensor:
    """Mean squared error of each bank member, [B]; weight (0/1 or soft) masks pixels."""
    d = (out - target) ** 2
    if weight is None:
        return d.flatten(1).mean(1)
    return (d * weight).flatten(1).sum(1) / (weight.flatten(1).sum(1) * out.shape[1] / weight.shape[1])


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-12))


@contextlib.contextmanager
def precision(mode: str, device: torch.device):
    """TF32 matmuls for the fit on a GPU ("tf32"; "fp32" and "bf16" turn them off), around a
    step's forward and its backward both: cuBLAS and the tail kernels (tail.py) read the flag
    when each product runs, so a backward outside it would run in full fp32. Until the
    twenty-fifth session it covered the forward only, and the "tf32" rows' backward passes ran
    in fp32. The CPU always runs fp32."""
    if device.type != "cuda" or mode == "fp32":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def autocast(mode: str, device: torch.device):
    """bf16 autocast for a step's forward on a GPU. Only the forward: autograd runs each op's
    backward in the dtype its forward was cast to, and torch advises against autocast around
    backward()."""
    if device.type != "cuda" or mode != "bf16":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def optimise(model, z, loss_fn, iters: int, lr: float, lr_floor: float = 1.0,
             transform=None, input_noise: float = 0.0, progress: Optional[Progress] = None,
             noise_seed: int = 0, mode: str = "fp32", observe=None, compile: bool = False,
             stop=None, rollback_db: float = 0.0, betas: tuple = ADAM_BETAS, optimizer: str = "adam"):
    """Run Adam (or Muon with Adam) on ``model`` for ``iters`` steps and load each member's best iterate.

    loss_fn(output) -> per-member losses [B]; transform(params) -> params used in the forward
    pass (identity for fitting, straight-through rounding for quantization-aware training).
    observe(output) sees every iteration's output (detached), e.g. to average them.
    compile: run the network through torch.compile (one compilation per shape; the fused
    kernels round differently, so a compiled fit is not bit-identical to an eager one); a
    string names a preset (COMPILE_PRESETS), e.g. "reduce-overhead" (CUDA graphs: one launch
    a step) or "fused".
    stop(iterations_done, losses) -> True ends the fit early; asked every STOP_EVERY steps.
    rollback_db: a member whose loss is that many dB above its best, checked every
    ROLLBACK_EVERY steps, goes back to its best iterate with its momentum cleared (DIP's
    backtracking): a blow-up at a high learning rate otherwise costs the rest of the fit.
    betas: Adam's decays of its first and second moments.
    optimizer: "adam", or "muon" (ddcodec.muon: the block convolutions; Adam for the other tensors).
    Returns the best per-member losses.

    Nothing in the loop reads a GPU value back except the progress report every
    REPORT_EVERY steps, so the host queues work ahead of the device.
    """
    params = [t for _, t in model.named_tensors()]
    opt = MuonAdam(model.named_tensors(), lr, betas, adam) if optimizer == "muon" else adam(params, lr, betas)
    net = compiled(model, compile, z.device) if compile else model
    graphs = compile in GRAPH_MODES and z.device.type == "cuda"
    best = _BestIterate(params)
    best_loss = torch.full((model.bank,), math.inf, device=z.device)
    gen = torch.Generator(device=z.device).manual_seed(noise_seed) if input_noise else None
    for it in range(iters):
        if graphs:  # a new step: the graphs may reuse the last step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        for group in opt.param_groups:  # cosine from lr to lr*lr_floor
            group["lr"] = lr * (lr_floor + (1 - lr_floor) * 0.5 * (1 + math.cos(math.pi * it / iters)))
        zin = z
        if input_noise:
            # decays to 0 over the run; with an early stop the end is unknown, so it stays
            std = input_noise * (1 if stop else 1 - it / iters)
            zin = z + std * torch.randn(z.shape, generator=gen, device=z.device)
        p = transform(params) if transform else params
        with precision(mode, z.device):
            with autocast(mode, z.device):
                out = net(zin, p).float()
                losses = loss_fn(out)
            if observe:
                observe(out.detach())
            del out  # the graph lives on in losses
            best.keep(params, losses.detach(), best_loss)
            opt.zero_grad(set_to_none=True)
            failure = _backward(net, losses, it == 0)
            if failure is not None:  # the step again on eager kernels
                del losses  # here, in the frame that holds it: the failed graph is freed first
                net.give_up(failure)
                opt.zero_grad(set_to_none=True)  # what the failed backward accumulated before it stopped
                with autocast(mode, z.device):
                    losses = loss_fn(net(zin, p).float())
                losses.sum().backward()
        opt.step()
        if progress and ((it + 1) % REPORT_EVERY == 0 or it + 1 == iters):
            # reading the loss syncs a GPU, so report every few steps, not every step
            l = losses.detach()
            progress(it + 1, iters, float(l.mean()), float(psnr_from_mse(l).mean()))
        if rollback_db and (it + 1) % ROLLBACK_EVERY == 0:
            # not (loss <= bound): a NaN or infinite loss is a blow-up too (NaN > bound is False)
            _roll_back(opt, params, best.tensors, ~(losses.detach() <= best_loss * 10 ** (rollback_db / 10)))
        if stop and (it + 1) % STOP_EVERY == 0 and stop(it + 1, losses.detach()):
            break
    with torch.no_grad():  # the final iterate has not been scored yet
        losses = loss_fn(model(z, transform(params) if transform else params))
        best.keep(params, losses, best_loss)
        for p, b in zip(params, best.tensors):
            p.copy_(b)
    return best_loss


def _backward(net, losses, first: bool) -> Optional[str]:
    """losses.sum().backward(); None, or why the compiled program's first backward failed.
    Autograd compiles the backward at its first call, and the tail kernels' largest passes
    first run there: a failure then is the compiler's, as in the forward, and the step is run
    again on eager kernels (optimise). A full GPU is not the compiler's, and eager kernels
    would not mend it: that raises, as does any failure after the first step."""
    try:
        losses.sum().backward()
    except Exception as e:  # noqa: BLE001 - the compiled backward's first run
        if not first or not isinstance(net, _EagerOnFailure) or net.fn is net.eager or "out of memory" in str(e):
            raise
        return _EagerOnFailure.reason(e)  # the retry runs outside the handler, its frames freed
    return None


def adam(params, lr: float, betas: tuple) -> torch.optim.Optimizer:
    """Adam in its fused form where this torch has one for the parameters' device: one kernel
    for all tensors instead of several per tensor. On a GPU that is a launch-bound single
    image's saving. On the CPU (torch 2.4 and later), where a step's 19 small tensors cost more
    in dispatch than in arithmetic, it took a median 12 % off a compiled 192x128 k=16 step
    and 6 % off an eager one, and was level on nine 256x170 tiles (benchmarks/adam.py). The
    same update, rounded its own way, as a compiled fit's is: one fit moves by a few tenths of a
    dB either way, but over 88 paired kodak fits the mean was -0.008 dB (benchmarks/
    adam_quality.py). Older torch refuses fused=True on a CPU: then the plain form."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except RuntimeError:  # "fused=True requires ... supported devices"
        return torch.optim.Adam(params, lr=lr, betas=betas)


@torch.no_grad()
def _roll_back(opt, params, best, bad):
    """Members flagged in bad [B] return to their best weights. Adam's first moment (the
    blow-up's momentum) is cleared; the second keeps the large gradients it saw, which damps
    the next steps, as a short drop of the learning rate would, except where it is no longer
    finite (a NaN gradient): there it restarts from 0, else every later step stays NaN."""
    if not bool(bad.any()):
        return
    for p, b in zip(params, best):
        m = bad.view(-1, *([1] * (p.dim() - 1)))
        p.copy_(torch.where(m, b, p))
        state = opt.state.get(p, {})
        if "exp_avg" in state:
            state["exp_avg"].masked_fill_(m, 0.0)
        if "exp_avg_sq" in state:
            sq = state["exp_avg_sq"]
            sq.masked_fill_(m & ~torch.isfinite(sq), 0.0)


class _BestIterate:
    """Each member's best weights, in one [B, N] tensor; .tensors are views of it shaped like
    the parameters. Keeping the best is then a few launches a step, not two per tensor: a
    single image on a GPU is bound by launches (the team's design notes)."""

    def __init__(self, params):
        self.flat = self._flatten(params)  # cat makes a new tensor: nothing shared with params
        self.tensors, start = [], 0
        for p in params:
            n = p[0].numel()
            self.tensors.append(self.flat[:, start:start + n].view(p.shape))
            start += n

    @staticmethod
    def _flatten(params):
        return torch.cat([p.detach().reshape(p.shape[0], -1) for p in params], 1)

    @torch.no_grad()
    def keep(self, params, losses, best_loss):
        # Always select, never branch on the comparison: asking whether any member improved
        # would wait for the GPU every step. The parameters are small; the copy is cheap.
        better = losses < best_loss
        best_loss.copy_(torch.where(better, losses, best_loss))
        self.flat.copy_(torch.where(better[:, None], self._flatten(params), self.flat))
