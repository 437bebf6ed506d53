"""A bank's 1x1-convolution products timed alone (speed.py --part bmm), against the bytes
each must move.

A bank's conv is a bmm of [B, k, k] weights by [B, k, P] activations (nets.decoder_program).
Its forward and its input gradient have P columns, so many output tiles. Its weight
gradient, grad_y [B, k, P] by x^T [B, P, k], has one k x k output per member and sums over
all P pixels: a strided batched GEMM has only a few output tiles per member to spread over
the card, and, unlike a single GEMM, it may not split that sum across thread blocks (read,
not measured: pytorch#114911, NVIDIA/cutlass#1033). The output conv's gradient, 3 x k per
member, has fewer still. With the activations stored pixel-major ([B, P, k], channels last),
the sum splits into S chunks as a free view, [B*S, P/S, k], and the S partial products add
up after: a batch S times larger. This times each form, so that a GPU run says whether the
weight gradients are far from the copy bandwidth and whether a channels-last layout would pay.
"""
import time

import torch

GPU_CASE = dict(k=64, pixels=(768 * 512, 384 * 256), banks=(1, 24), splits=(8, 64))
CPU_CASE = dict(k=16, pixels=(192 * 128,), banks=(1, 4), splits=(8,))  # a check that it runs


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn, dev, reps: int, rounds: int = 3) -> float:
    """The best of rounds of reps calls, per call, after one untimed call."""
    fn()
    _sync(dev)
    out = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(dev)
        out = min(out, (time.perf_counter() - t0) / reps)
    return out


def _forms(bank, k, c, p, splits, dtype, dev) -> dict:
    """name -> (the product, bytes it must read and write at the least)."""
    elem = torch.finfo(dtype).bits // 8
    g = torch.randn(bank, c, p, device=dev, dtype=dtype)  # the output's gradient
    x = torch.randn(bank, k, p, device=dev, dtype=dtype)  # the conv's input
    w = torch.randn(bank, c, k, device=dev, dtype=dtype)
    pair = (c + k) * p * bank * elem  # the weight gradient reads g and x once
    what = "output-conv" if c != k else "block"
    forms = {f"{what} forward, bmm": (lambda: torch.bmm(w, x), pair),
             f"{what} weight grad, bmm": (lambda: torch.bmm(g, x.transpose(1, 2)), pair)}
    if bank == 1:  # what a single GEMM does with the same sum (it may split it)
        forms[f"{what} weight grad, mm"] = (lambda: torch.mm(g[0], x[0].t()), pair)
    gl, xl = g.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous()
    for s in splits:
        if p % s:
            continue
        q = p // s
        forms[f"{what} weight grad, channels last, {s} splits"] = (
            lambda s=s, q=q: torch.bmm(gl.view(bank * s, q, c).transpose(1, 2), xl.view(bank * s, q, k))
            .view(bank, s, c, k).sum(1), pair)
    return forms


def times(dev: torch.device, precision: str, copy_gbs: float, case: dict = None, reps: int = 20) -> list:
    """One row per (bank, pixels, form): ms, GB/s moved, and the time against the copy floor."""
    case = case or (GPU_CASE if dev.type == "cuda" else CPU_CASE)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    rows = []
    try:
        for bank in case["banks"]:
            for p in case["pixels"]:
                for c in (case["k"], 3):
                    for name, (fn, nbytes) in _forms(bank, case["k"], c, p, case["splits"], dtype, dev).items():
                        s = best_seconds(fn, dev, reps)
                        rows.append(dict(form=name, bank=bank, pixels=p, k=case["k"], precision=precision,
                                         ms=s * 1e3, gbs=nbytes / s / 1e9, x_floor=s / (nbytes / (copy_gbs * 1e9))))
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return rows


def table(rows) -> str:
    lines = ["| product | bank | pixels | precision | ms | GB/s | x copy floor |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['form']} | {r['bank']} | {r['pixels']} | {r['precision']} | {r['ms']:.3f} | "
              f"{r['gbs']:.0f} | {r['x_floor']:.1f}x |" for r in rows]
    return "\n".join(lines)
