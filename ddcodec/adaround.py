"""Learned rounding (AdaRound: Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020): each weight chooses the integer below or above w / s, the choice
learned against the image instead of taken as the nearest.

Rounding to the nearest integer is optimal for each weight alone, not for the network: the
errors of a layer's weights add up in its outputs. AdaRound relaxes the choice to
h(V) in [0, 1] (a rectified sigmoid), so that the quantized weight s (floor(w / s) + h(V)) is
differentiable, minimises the fit's loss over V with a regulariser that drives every h to 0
or 1, and then rounds h. The steps, and so the rate, stay those the search chose: a choice
between two neighbours moves the integers' histogram, and with it the entropy coder's bytes,
very little (kodak-mini: the same bytes to the byte).

Here it runs on the whole network against the image's loss (the paper rounds layer by layer
against each layer's output), after the quantization-aware fine-tuning: that moves the float
weights so that their nearest integers fit well, and this then picks between neighbours.
"""
import torch

from .compiling import GRAPH_MODES, compiled
from .fit import REPORT_EVERY, autocast, precision, psnr_from_mse
from .quant import _bank_view

# the rectified sigmoid's stretch (the paper's zeta and gamma): h reaches 0 and 1 exactly
ZETA, GAMMA = 1.1, -0.1
WARM_UP = 0.2  # the first fifth of the steps without the regulariser (the paper's)
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed: flat at first, then pulls to 0 or 1


def _h(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def learn_rounding(model, z, loss_fn, steps: list, iters: int, lr: float, weight: float,
                   mode: str = "fp32", compile=False, progress=None) -> torch.Tensor:
    """Set the model's tensors to a learned rounding on their steps (each a [B] tensor): every
    weight becomes s * q with q the integer below or above w / s. A member whose learned
    rounding fits worse than the nearest integers keeps the nearest. weight: the regulariser's
    (the paper's lambda), against a loss of 1 for the nearest rounding. Returns the members'
    final losses [B]. progress(it, iters, loss, psnr) as optimise's, on the relaxed net."""
    params = [t for _, t in model.named_tensors()]
    views = [_bank_view(s, p) for s, p in zip(steps, params)]
    with torch.no_grad():
        scaled = [p.detach() / s for p, s in zip(params, views)]
        below = [torch.floor(x) for x in scaled]
        nearest = [torch.round(x) for x in scaled]
        nearest_loss = loss_fn(model(z, [q * s for q, s in zip(nearest, views)])).detach()
        # start where h equals the fraction: the relaxed net is the float net
        frac = [(x - b).clamp(0.01, 0.99) for x, b in zip(scaled, below)]
        vs = [(-torch.log((ZETA - GAMMA) / (f - GAMMA) - 1)).requires_grad_(True) for f in frac]
    # the fit's compiled program, which the fine-tuning has run forward and backward already;
    # not a CUDA-graph preset's, whose folded net would compile a program of its own here
    net = compiled(model, compile, z.device) if compile and compile not in GRAPH_MODES else model
    opt = torch.optim.Adam(vs, lr=lr)
    scale = 1 / nearest_loss.clamp_min(1e-12)  # each member's loss relative to its nearest rounding
    count = sum(v[0].numel() for v in vs)
    warm = int(WARM_UP * iters)
    for it in range(iters):
        hs = [_h(v) for v in vs]
        with precision(mode, z.device):
            with autocast(mode, z.device):
                losses = loss_fn(net(z, [(b + h) * s for b, h, s in zip(below, hs, views)]).float())
            loss = (losses * scale).sum()
            if it >= warm:
                beta = BETA[0] + (BETA[1] - BETA[0]) * (it - warm) / max(1, iters - warm)
                undecided = sum((1 - (2 * h - 1).abs().pow(beta)).flatten(1).sum(1) for h in hs) / count
                loss = loss + weight * undecided.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if progress and ((it + 1) % REPORT_EVERY == 0 or it + 1 == iters):
            mse = losses.detach()
            progress(it + 1, iters, float(mse.mean()), float(psnr_from_mse(mse).mean()))
    with torch.no_grad():
        learned = [b + (v >= 0).to(b.dtype) for b, v in zip(below, vs)]  # h >= 1/2
        learned_loss = loss_fn(model(z, [q * s for q, s in zip(learned, views)]))
        better = learned_loss < nearest_loss
        for p, q_l, q_n, s in zip(params, learned, nearest, views):
            p.copy_(torch.where(better.view(-1, *([1] * (p.dim() - 1))), q_l, q_n) * s)
    return torch.where(better, learned_loss, nearest_loss)
