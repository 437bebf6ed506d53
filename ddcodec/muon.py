"""Muon for the Deep Decoder's k x k convolutions (Jordan et al., "Muon: an optimizer for hidden
layers", 2024): the step of each weight matrix is its momentum made (nearly) orthogonal by a
Newton-Schulz iteration, so that every direction of the matrix moves by about as much, however
unevenly the gradient weighs them. The other tensors (the output conv, the normalisations'
scales and shifts) take Adam, as in Muon's own recipe.

Each member of a bank is its own fit: its matrices are orthogonalised on their own (one batched
iteration over [B * T, k, k]), never mixed with another member's.

Measured on kodak-mini (benchmarks/NOTES.md): at the same 3,000 steps and rate, Muon's fits
decode 0.3-0.5 dB above Adam's. The update is scaled to about Adam's size
(0.2 sqrt(max(m, n)) times the orthogonal matrix, Moonshot's "match RMS" rule), so the width's
learning-rate rule (fit.default_lr) carries over: Muon gained at that rule's rates at k = 8, 15,
21, 31 and 64.
"""
import math
from collections import ChainMap

import torch

# The quintic iteration's coefficients (Jordan et al.): they push every singular value of a
# normalised matrix towards [0.7, 1.2] in five steps, not exactly to 1, which by their account
# trains as well as the exact orthogonal factor.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
MOMENTUM = 0.95  # Nesterov momentum, Muon's default
RMS_SCALE = 0.2  # the update's rms over the matrix, as Adam's typically is


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """[N, m, n] -> the nearest (semi-)orthogonal matrices, roughly, each on its own. In fp32:
    the CPU's bf16 is slower than its fp32 here, and these matrices are tiny."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[1] > x.shape[2]
    if tall:  # iterate on the wide form: the Gram matrix is then the smaller side's
        x = x.transpose(1, 2)
    # scaled so that every singular value is at most 1: the Frobenius norm bounds the largest
    x = x / (x.flatten(1).norm(dim=1).view(-1, 1, 1) + 1e-7)
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.transpose(1, 2) if tall else x


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A block's 1x1 convolution, [B, k, k]: a hidden layer's weights, which Muon is for. Not
    the output conv, even where it is square (k = 3 for an RGB image): Muon's authors keep the
    output layer on Adam, and a 1x1 image fitted with its output conv on Muon landed 11 dB
    below Adam's fit in 20 steps."""
    return name.startswith("block") and name.endswith(".conv") and p.dim() == 3


class MuonAdam:
    """Muon for the hidden matrices (is_hidden_matrix), Adam (adam_factory's) for the rest, as
    one optimiser: param_groups (whose "lr" fit.optimise's schedule sets), state (each tensor's
    "exp_avg" is its first moment, which a rollback clears), zero_grad() and step().
    named_params: (name, tensor) pairs, as a model's named_tensors()."""

    def __init__(self, named_params, lr: float, betas: tuple, adam_factory, momentum: float = MOMENTUM):
        named_params = list(named_params)
        self.matrices = [p for n, p in named_params if is_hidden_matrix(n, p)]
        rest = [p for n, p in named_params if not is_hidden_matrix(n, p)]
        self.momentum = momentum
        self.adam = adam_factory(rest, lr, betas) if rest else None
        self._group = {"params": self.matrices, "lr": lr}
        self._state = {}

    @property
    def param_groups(self) -> list:
        return [self._group] + (self.adam.param_groups if self.adam else [])

    @property
    def state(self):
        return ChainMap(self._state, self.adam.state if self.adam else {})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.matrices:
            p.grad = None
        if self.adam:
            self.adam.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        if self.adam:
            self.adam.step()
        live = [p for p in self.matrices if p.grad is not None]
        if not live:
            return
        # torch._foreach_*: one launch for the whole list where a loop launches one kernel per
        # tensor (24 a step at 6 blocks, on a GPU outside the compiled program); the same
        # element-wise arithmetic, so the same bits
        grads = [p.grad for p in live]
        bufs = [self._state.setdefault(p, {"exp_avg": torch.zeros_like(p)})["exp_avg"] for p in live]
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=self.momentum)  # Nesterov
        # one iteration for every matrix of the same shape (all of them, in the Deep Decoder)
        by_shape = {}
        for p, u in zip(live, updates):
            by_shape.setdefault(tuple(p.shape), []).append((p, u))
        lr = self._group["lr"]
        for shape, pairs in by_shape.items():
            o = orthogonalise(torch.cat([u for _, u in pairs]))
            scale = -lr * RMS_SCALE * math.sqrt(max(shape[1], shape[2]))
            steps = [oi.to(p.dtype) for (p, _), oi in zip(pairs, o.split(shape[0]))]
            torch._foreach_add_([p for p, _ in pairs], steps, alpha=scale)
