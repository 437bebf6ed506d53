"""Bit-exact reconstruction of the Deep Decoder: the same pixels on every machine and device.

A float32 forward pass differs between machines in its last bits, since each BLAS library,
thread count and vector width sums in its own order, and each maths library has its own exp.
An 8-bit pixel near a rounding edge then moves by one. This decoder leaves no such freedom:

- Every 1x1 convolution multiplies integers. The weights are the file's integers q, and the
  activations are rounded to a fixed-point grid of 2^-S. Integers below 2^53 are exact in
  float64, and every partial sum here stays below 2^53: the bound is checked, and S shrinks
  if it would not hold. So a matrix product is exact whatever order the library sums in.
  The step of the tensor, and 2^-S, are applied afterwards, with one rounding.
- All else is elementwise IEEE-754 arithmetic (+, -, *, / and sqrt are correctly rounded on
  every conforming machine), each operation its own kernel, so nothing gets fused into an FMA.
  Sums over pixels follow one fixed pairwise order, and per-channel scalars are computed in
  Python floats.
- The sigmoid and the rounding to 8 bits together are a comparison with 255 thresholds,
  logit((m - 0.5) / 255). These are computed once with the decimal module, which rounds
  correctly, so no exp is evaluated at all.

The encoder reports the PSNR of this decode. The weights used are the exact q * step, not the
float32 products that fitting used, and the activations are rounded to 2^-20 (relative errors
near 1e-6), which moves the output far less than one level. docs/format.md gives the rules.
"""
import math
from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np
import torch

from .nets import BN_EPS, Architecture

FRACTION_BITS = 20  # S: activations are rounded to multiples of 2^-S before each product
EXACT_LIMIT = 2**53  # integers below this are exact in float64
F64 = torch.float64


@lru_cache(maxsize=1)
def thresholds() -> torch.Tensor:
    """logit((m - 0.5) / 255) for m = 1..255, as float64: an output y decodes to the number of
    thresholds at or below it (255 * sigmoid(y), rounded half up)."""
    out = []
    with localcontext() as ctx:
        ctx.prec = 40
        for m in range(1, 256):
            p = Decimal(2 * m - 1) / Decimal(510)
            out.append(float((p / (1 - p)).ln()))  # Decimal -> float is correctly rounded
    return torch.tensor(out, dtype=F64)


def to_levels(y: torch.Tensor) -> torch.Tensor:
    """Output-layer values -> uint8: how many thresholds are at most each value. NaN (only
    from a damaged file) decodes as sigmoid(0)."""
    y = torch.nan_to_num(y, nan=0.0)
    return torch.searchsorted(thresholds().to(y.device), y.contiguous(), right=True).to(torch.uint8)


def _tensors(ints: list, device) -> list:
    """The file's integer tensors as float64 (exact: every |q| is far below 2^53)."""
    return [torch.from_numpy(np.asarray(t, dtype=np.float64)).to(device) for t in ints]


def pairwise_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of each row of [rows, n] in one fixed order on every machine: halve the row, add the
    two halves elementwise, repeat (an odd length first gains a trailing zero, which is exact)."""
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1)], 1)
        half = x.shape[1] // 2
        x = x[:, :half] + x[:, half:]
    return x[:, 0]


def to_grid(x: torch.Tensor, q: torch.Tensor) -> tuple:
    """x [k, n] rounded to the fixed-point grid for a product with integer-valued q [m, k],
    in place (x is overwritten): (integers x * 2^S, S). S = FRACTION_BITS unless the product
    could reach 2^53."""
    top, bottom = (float(x.max()), float(x.min())) if x.numel() else (0.0, 0.0)
    if not (math.isfinite(top) and math.isfinite(bottom)):  # only a damaged file overflows
        x = torch.nan_to_num_(x)  # NaN -> 0, infinities -> the largest floats
        top, bottom = float(x.max()), float(x.min())
    largest = max(top, -bottom)
    row_l1 = int(q.abs().sum(1).max()) if q.numel() else 0  # integers: exact in any order
    s = FRACTION_BITS
    while s > -1000:  # below S only for activations or weights far beyond any fit's
        scaled = largest * 2.0**s
        if math.isfinite(scaled) and row_l1 * (math.floor(scaled) + 1) < EXACT_LIMIT:
            break
        s -= 1
    return x.mul_(2.0**s).round_(), s  # a power of two: the multiplication itself is exact


def fixed_product(q: torch.Tensor, step: float, x: torch.Tensor) -> torch.Tensor:
    """(q * step) @ x for integer-valued q [m, k] and x [k, n] (overwritten), exactly as the
    module says: x rounded to 2^-S, an integer product below 2^53, one scaling by step * 2^-S."""
    xi, s = to_grid(x, q)
    return (q @ xi).mul_(step * 2.0**-s)


def normalise(x: torch.Tensor, out=None) -> torch.Tensor:
    """Channel normalisation of [k, n] over its n pixels, as batch_norm in training mode
    (biased variance, eps BN_EPS), without affine, into out if given. One pixel gives 0."""
    inv_n = 1.0 / x.shape[1]
    centred = x - (pairwise_sum(x) * inv_n)[:, None]
    var = pairwise_sum(centred * centred) * inv_n
    scale = torch.tensor([1.0 / math.sqrt(v + BN_EPS) for v in var.tolist()], dtype=F64, device=x.device)
    return torch.mul(centred, scale[:, None], out=out)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """nets.upsample2x bit for bit, with less memory traffic: each output is the same single
    IEEE sum of the same two products (0.75 x[i] + 0.25 x[i -+ 1], edges clamped), but the
    products are formed once per axis and the sums written straight into the interleaved
    output, with no concatenated or stacked copies (2.8x faster on the CPU)."""
    return _upsample_axis(_upsample_axis(x, x.dim() - 2), x.dim() - 1)


def _upsample_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    near, far = 0.75 * x, 0.25 * x
    shape = list(x.shape)
    shape[dim] *= 2
    out = x.new_empty(shape)
    pairs = out.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    torch.add(near.narrow(dim, 1, n - 1), far.narrow(dim, 0, n - 1), out=even.narrow(dim, 1, n - 1))
    torch.add(near.narrow(dim, 0, 1), far.narrow(dim, 0, 1), out=even.narrow(dim, 0, 1))
    torch.add(near.narrow(dim, 0, n - 1), far.narrow(dim, 1, n - 1), out=odd.narrow(dim, 0, n - 1))
    torch.add(near.narrow(dim, n - 1, 1), far.narrow(dim, n - 1, 1), out=odd.narrow(dim, n - 1, 1))
    return out


# Output channels per pass: a block works channel by channel after its product, so a pass may
# take any number of them, and it takes as many as its temporaries' budget allows. On a CPU the
# budget keeps them near the caches (8 MB of float64): a 768x512 k=64 file decoded in 0.53-0.64 s
# with 2 channels a pass at full size, 1.05-1.22 s with 8 (2 threads, one session's runs), and a
# file of 256x171 tiles in about 0.1 s either way. On a GPU each pass is ~80 small kernels and
# a synchronisation whatever its width, so a pass takes up to 2^25 values (256 MB): a whole
# k=64 block at 768x512.
CPU_VALUES = 1 << 20
GPU_VALUES = 1 << 25


def channels_per_pass(k: int, pixels: int, device: torch.device) -> int:
    budget = CPU_VALUES if device.type == "cpu" else GPU_VALUES
    return max(1, min(k, budget // max(pixels, 1)))


def render(arch: Architecture, ints: list, steps: list, z: torch.Tensor) -> torch.Tensor:
    """The Deep Decoder's output as uint8 [c, H, W] (before cropping). ints: the file's integer
    tensors in file order (numpy), steps: their steps (Python floats), z: the seeded input
    [k, h, w] (its float32 values are exact in float64).

    Each block forms its whole product, then runs channels_per_pass output channels at a
    time: every operation after the product is per channel, so the pixels are the same as for
    the whole block at once, and the temporaries at full resolution are that many channels,
    not k."""
    if arch.kind != "deep-decoder":
        raise ValueError("the exact decoder is the Deep Decoder's")
    dev = z.device
    q = _tensors(ints, dev)
    d, k = arch.layers, arch.channels
    per_block = 1 if arch.folded else 3
    x = z.to(F64, copy=True).reshape(k, -1)  # to_grid rounds it in place
    h, w = z.shape[1:]
    for i in range(d):
        weight, step = q[per_block * i], steps[per_block * i]
        xi, s = to_grid(x, weight)
        up = i < d - 1
        # the whole block's product at once (one large matrix product runs 2x faster than 8
        # row slices on the CPU; exact either way); without upsampling the block's output
        # takes its place, pass by pass
        prod = (weight @ xi).mul_(step * 2.0**-s)
        del xi, x
        x = torch.empty(k, 4 * h * w, dtype=F64, device=dev) if up else prod
        chunk = channels_per_pass(k, x.shape[1], dev)
        for c0 in range(0, k, chunk):
            c1 = min(c0 + chunk, k)
            y = prod[c0:c1]
            if arch.folded and i > 0:  # the biases of blocks 1..d-1 are one [d-1, k] tensor
                y.add_((q[d][i - 1, c0:c1] * steps[d])[:, None])
            if up:
                y = upsample2x(y.view(c1 - c0, h, w)).reshape(c1 - c0, -1)
            y = normalise(y.relu_(), out=x[c0:c1])
            if not arch.folded:  # the stored normalisation's own scale and shift
                g, b = q[3 * i + 1][c0:c1] * steps[3 * i + 1], q[3 * i + 2][c0:c1] * steps[3 * i + 2]
                y.mul_(g[:, None]).add_(b[:, None])
        if up:
            h, w = 2 * h, 2 * w
    out = -2 if arch.folded else -1  # the output conv: followed by its bias when folded
    y = fixed_product(q[out], steps[out], x)
    if arch.folded:
        y.add_((q[-1] * steps[-1])[:, None])
    return to_levels(y).view(-1, h, w)


BAND_VALUES = 1 << 24  # im2col values per band of output rows: bounds a 3x3 conv's temporaries


def conv2d(x: torch.Tensor, q: torch.Tensor, step: float, stride: int = 1) -> torch.Tensor:
    """(q * step) convolved with x [cin, H, W] (overwritten: rounded to the grid), q integer-valued
    [cout, cin, kh, kw]; a 3x3 kernel pads by 1 (reflect, or replicate for a one-pixel side), as
    the skip net does. Exact as fixed_product: the columns are copies of grid values, and the
    bound over q's flattened rows holds for every output. Bands of output rows keep the
    columns to about BAND_VALUES values."""
    cout, cin, kh, kw = q.shape
    qm = q.reshape(cout, -1)
    xi, s = to_grid(x.reshape(cin, -1), qm)
    xi = xi.view(1, cin, *x.shape[1:])
    if kh == 3:
        xi = torch.nn.functional.pad(xi, (1, 1, 1, 1), mode="reflect" if min(x.shape[1:]) > 1 else "replicate")
    hp, wp = xi.shape[2:]
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    out = torch.empty(cout, ho, wo, dtype=F64, device=x.device)
    rows = max(1, BAND_VALUES // (cin * kh * kw * wo))
    for r0 in range(0, ho, rows):
        r1 = min(r0 + rows, ho)
        band = xi[:, :, r0 * stride:(r1 - 1) * stride + kh]
        cols = torch.nn.functional.unfold(band, (kh, kw), stride=stride)[0]
        out[:, r0:r1] = (qm @ cols).view(cout, r1 - r0, wo)
    return out.mul_(step * 2.0**-s)


def render_skip(arch: Architecture, ints: list, steps: list, z: torch.Tensor) -> torch.Tensor:
    """The DIP skip net's output as uint8 [c, H, W], by the same rules as render: integer
    convolutions (conv2d), elementwise IEEE arithmetic, normalise, and the thresholds.
    LeakyReLU(0.2) is max(x, 0.2 * x) elementwise."""
    from .skip import _PER_SCALE
    q = _tensors(ints, z.device)

    def real(at):  # a bias, scale or shift: exact values for |q| < 2^29
        return q[at] * steps[at]

    def affine(x, at):  # normalisation over each channel's pixels, then its scale and shift
        c = x.shape[0]
        y = normalise(x.reshape(c, -1)).view(x.shape)
        return y.mul_(real(at)[:, None, None]).add_(real(at + 1)[:, None, None])

    def conv(x, at, stride=1):
        y = conv2d(x.clone(), q[at], steps[at], stride).add_(real(at + 1)[:, None, None])
        y = affine(y, at + 2)
        return torch.maximum(y, y * 0.2)

    def level(x, i):
        at = _PER_SCALE * i  # skip, down1, down2 (4 tensors each), cat (2), up, up1 (4 each)
        skip = conv(x, at)
        d = conv(conv(x, at + 4, stride=2), at + 8)
        if i + 1 < arch.layers:
            d = level(d, i + 1)
        d = upsample2x(d)[..., :skip.shape[-2], :skip.shape[-1]]
        y = affine(torch.cat([skip, d], 0), at + 12)
        return conv(conv(y, at + 14), at + 18)

    y = conv2d(level(z.to(F64, copy=True), 0), q[-2], steps[-2]).add_(real(len(q) - 1)[:, None, None])
    return to_levels(y)
