"""The Deep Decoder (Heckel & Hand, "Deep Decoder", ICLR 2019, sec. 2), written over a bank.

A bank holds B independent decoders as batched tensors: block i's 1x1 convolution is one
[B, k, k] tensor applied with bmm, and the channel normalisation runs as batch_norm on a
[1, B*k, H, W] view, so each image is normalised over its own pixels. One optimiser step then
advances B fits whose gradients never mix (the team's design notes: bmm beat grouped convolutions).

Block i: 1x1 conv (no bias) -> bilinear x2 upsample (not in the last block) -> ReLU ->
normalisation with affine scale/shift. Then a 1x1 conv to the image channels and a sigmoid.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .checks import integer, keep
from .errors import ConfigError
from .noise import uniform

INPUT_SCALE = 0.1  # z ~ U[0, 0.1), as in the reference code
BN_EPS = 1e-5  # torch's BatchNorm2d default, which the reference uses


@dataclass(frozen=True)
class Architecture:
    kind: str = "deep-decoder"  # "deep-decoder", or "skip" (the DIP comparison net)
    channels: int = 64  # k: width of every block; the paper uses 64 for compression
    layers: int = 6  # d blocks, d-1 upsamplings: the paper's default
    out_channels: int = 3  # 3 for RGB, 1 for grayscale
    # The Deep Decoder as stored (format 3): each normalisation's scale and shift folded into
    # the next 1x1 convolution as a weight and a bias. The same function, k fewer weights per block.
    folded: bool = False
    # The image is the centre of the output canvas, with a margin on every side (canvas(),
    # format 5), instead of its top-left corner. The Deep Decoder fits the pixels
    # at its output's edge poorly: on kodak-mini their squared error was 5-7x the image's mean,
    # and the seams of full-size tiles showed the same on every side without a margin. The
    # margin is never fitted and never sent: only the canvas grows (by whole input pixels).
    margin: bool = False

    def __post_init__(self):
        if self.kind not in ("deep-decoder", "skip"):
            raise ConfigError(f"unknown architecture {self.kind!r}")
        if self.folded and self.kind != "deep-decoder":
            raise ConfigError("only the Deep Decoder has a folded form")
        if self.margin and self.kind != "deep-decoder":
            raise ConfigError("only the Deep Decoder has a margin")
        # as Python ints: numpy's uint8 or int32 would overflow the work and multiply-add counts
        # (k=1024 at 512x512 passed the reader's limit in int32) and fail json.dumps as int64
        keep(self, "channels", integer("channels", self.channels, 1, 1024))
        keep(self, "layers", integer("layers", self.layers, 1, 12))
        if self.out_channels not in (1, 3):
            raise ConfigError(f"out_channels must be 1 or 3, got {self.out_channels}")
        keep(self, "out_channels", int(self.out_channels))

    @property
    def upsamplings(self) -> int:
        return self.layers - 1


def canvas(arch: Architecture, height: int, width: int) -> tuple:
    """(canvas height, canvas width, top, left): the network's output size for a height x width
    image, and where the image lies in it (crop). The Deep Decoder's canvas is whole input
    pixels of 2^(d-1) output pixels, the skip net's whole multiples of 2^d; the image is the
    canvas's top-left corner, or with Architecture.margin its centre, a quarter of an input
    pixel or more from every edge (8 output pixels at 6 blocks; none without an upsampling,
    whose output pixels are each their own function of z)."""
    if arch.kind == "skip":
        f = 2**arch.layers
        return f * math.ceil(height / f), f * math.ceil(width / f), 0, 0
    f = 2**arch.upsamplings
    pad = 2 * (f // 4) if arch.margin else 0
    ch, cw = f * math.ceil((height + pad) / f), f * math.ceil((width + pad) / f)
    if not arch.margin:
        return ch, cw, 0, 0
    return ch, cw, (ch - height) // 2, (cw - width) // 2


def crop(arch: Architecture, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The image's pixels [..., height, width] of the network's output [..., canvas]."""
    _, _, top, left = canvas(arch, height, width)
    return out[..., top:top + height, left:left + width]


def input_shape(arch: Architecture, height: int, width: int) -> tuple:
    """Shape of z for a height x width image (the output is its canvas, then cropped).
    The Deep Decoder starts small and upsamples; the skip net takes a full-size input."""
    ch, cw, _, _ = canvas(arch, height, width)
    if arch.kind == "skip":
        return (32, ch, cw)
    f = 2**arch.upsamplings
    return (arch.channels, ch // f, cw // f)


def layers_for(layers: int, height: int, width: int) -> int:
    """The Deep Decoder's blocks for a height x width output: at most `layers`, and few enough
    that each side of more than one pixel starts from at least two input pixels. One input
    pixel along a side stays constant through every upsampling and normalisation, so the whole
    output would be constant along it (a 48x32 image at 6 blocks decoded to 32 equal rows)."""
    for side in (height, width):
        if side > 1:
            layers = min(layers, (side - 1).bit_length())  # 2^(d-1) < side
    return layers


def work(arch: Architecture, height: int, width: int) -> int:
    """The largest activation, in floats, that decoding height x width takes: the network runs
    on the padded size input_shape implies, not on the cropped image (a 1x1 image at 12 blocks
    runs at 2048x2048). The skip net's widest layer concatenates its skip channels (and its
    input has 32)."""
    c, h, w = input_shape(arch, height, width)
    if arch.kind == "skip":
        return max(arch.channels + 4, c) * h * w
    f = 2**arch.upsamplings
    return arch.channels * h * f * w * f


def macs(arch: Architecture, height: int, width: int) -> int:
    """The multiply-adds of one decode of height x width, on the padded size: its time, as work()
    is its memory. work() alone does not bound it, since a block's product costs k^2 per pixel:
    a 35-byte header at k=1024, 512x512, 1 block asks no more memory than k=64 at 2048^2, yet
    takes 12 times the products."""
    c, h, w = input_shape(arch, height, width)
    px = h * w
    if arch.kind == "skip":  # each convolution at its level's resolution; the padding makes it exact
        total = 0
        for name, shape in tensor_shapes(arch):
            if len(shape) < 4:  # biases, scales and shifts: no products
                continue
            if name == "out.w":
                total += math.prod(shape) * px
                continue
            level = int(name[1:name.index(".")]) + (".down" in name)  # down convs have stride 2
            total += math.prod(shape) * (px >> (2 * level))
        return total
    k, d = arch.channels, arch.layers
    blocks = sum(k * k * px * 4**i for i in range(d))  # block i runs before its upsampling
    return blocks + arch.out_channels * k * px * 4**(d - 1)


def seeded_input(arch: Architecture, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(uniform(seed, input_shape(arch, height, width), INPUT_SCALE))


def param_count(arch: Architecture) -> int:
    """N = d*k^2 + 2*d*k + c*k for the Deep Decoder (the team's design notes); d*k^2 + (d-1)*k + c*k + c
    folded; counted for the skip net."""
    if arch.kind == "skip":
        return sum(math.prod(s) for _, s in tensor_shapes(arch))
    k, d, c = arch.channels, arch.layers, arch.out_channels
    if arch.folded:
        return d * k * k + (d - 1) * k + c * k + c
    return d * k * k + 2 * d * k + c * k


def build(arch: Architecture, seeds=(0,), live_first_block: bool = False) -> nn.Module:
    """The network of an architecture, a bank of len(seeds) members. live_first_block: start
    the Deep Decoder with every first-block channel alive (DeepDecoder's docstring)."""
    if arch.kind == "skip":
        from .skip import SkipNet
        return SkipNet(arch, seeds)
    if arch.folded:
        return FoldedDeepDecoder(arch, len(seeds))
    return DeepDecoder(arch, seeds, live_first_block)


def tensor_shapes(arch: Architecture) -> list:
    """(name, shape) of each coded tensor in file order, without the bank dimension."""
    if arch.kind == "skip":
        from .skip import skip_shapes
        return skip_shapes(arch)
    k, c = arch.channels, arch.out_channels
    if arch.folded:  # the biases of blocks 1..d-1 are one tensor: one header entry, not d-1
        convs = [(f"block{i}.conv", (k, k)) for i in range(arch.layers)]
        bias = [("blocks.bias", (arch.layers - 1, k))] if arch.layers > 1 else []
        return convs + bias + [("out.conv", (c, k)), ("out.bias", (c,))]
    out = []
    for i in range(arch.layers):
        out += [(f"block{i}.conv", (k, k)), (f"block{i}.scale", (k,)), (f"block{i}.shift", (k,))]
    return out + [("out.conv", (c, k))]


def _upsample_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    # Bilinear x2 with align_corners=False along one axis: output 2i is 3/4 x[i] + 1/4 x[i-1],
    # output 2i+1 is 3/4 x[i] + 1/4 x[i+1], edges clamped. Written with slices so its backward
    # has no atomics: CUDA's upsample backward does, and would make re-encodes differ.
    n = x.shape[dim]
    prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling of [..., H, W], equal to F.interpolate(align_corners=False)."""
    return _upsample_axis(_upsample_axis(x, x.dim() - 2), x.dim() - 1)


def output_conv(w: torch.Tensor, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """The last 1x1 convolution, [B, c, k] on [B, k, H, W] -> [B, c, H, W].
    fused: written as a sum over the k channels instead of a bmm. Only for torch.compile:
    inductor makes it one reduction that reads the normalised activation as it computes it,
    so the widest tensor of the step is neither written nor read back, and the backward
    folds the c x k product into the normalisation's. Eager, it would build a [B, c, k, H*W]
    temporary."""
    bsz, k, h, wd = x.shape
    if fused:
        return (w[:, :, :, None] * x.reshape(bsz, 1, k, h * wd)).sum(2).view(bsz, -1, h, wd)
    return torch.bmm(w, x.reshape(bsz, k, h * wd)).view(bsz, -1, h, wd)


def channel_norm(x: torch.Tensor, g=None, b=None) -> torch.Tensor:
    """Per-channel normalisation of [1, C, H, W] over its pixels, then scale g and shift b
    (none: the folded net's plain normalisation).
    One pixel (a 1x1 image, one block) normalises to 0, as the formula's limit says;
    batch_norm refuses that case with a ValueError. x * 0, not x - x.detach(): both are 0,
    but the latter passes a gradient of 1 back, and the weights before it, on which the
    output does not depend, drifted through the fit (and cost rate)."""
    if x.shape[2] * x.shape[3] == 1:
        y = x * 0
        return y if g is None else y * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    return F.batch_norm(x, None, None, g, b, training=True, eps=BN_EPS)


class DeepDecoder(nn.Module):
    """B Deep Decoders of one architecture. forward(z: [B, k, h, w]) -> [B, c, h*2^(d-1), ...].

    live_first_block: negate each first-block row whose weights sum below zero. The input z is
    non-negative with mean 0.05, so that mean dominates W z, and a row summing below zero gives
    a channel the ReLU zeroes at (nearly) every pixel; a channel zeroed everywhere has no
    gradient and stays dead. At torch's init about half the rows sum below zero (13 of 64
    channels are dead at once for k=64, seed 0, and more die early in the fit): 45-48 % of
    block 0's channels were dead in the kodak-mini RD files. Negating a row keeps its
    magnitudes and its seeding; after the fit 12 % were dead instead (kodim01-04, 0.5 bpp).
    FitConfig.live_first_block_for decides when a fit uses it."""

    def __init__(self, arch: Architecture, seeds=(0,), live_first_block: bool = False):
        super().__init__()
        self.arch, self.bank = arch, len(seeds)
        k, d, c, bank = arch.channels, arch.layers, arch.out_channels, len(seeds)
        # torch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn on the CPU from
        # one generator per member, seeded by that member's seed: the start point is the same
        # on every device and does not depend on which bank the image shares.
        gens = [torch.Generator().manual_seed(s) for s in seeds]

        def init(*shape):
            u = torch.stack([torch.rand(*shape, generator=g) for g in gens])
            return nn.Parameter((u * 2 - 1) / math.sqrt(shape[-1]))

        self.weight = nn.ParameterList([init(k, k) for _ in range(d)])
        if live_first_block:
            with torch.no_grad():
                w0 = self.weight[0]
                w0.mul_(torch.where(w0.sum(2, keepdim=True) < 0, -1.0, 1.0))
        self.scale = nn.ParameterList([nn.Parameter(torch.ones(bank, k)) for _ in range(d)])
        self.shift = nn.ParameterList([nn.Parameter(torch.zeros(bank, k)) for _ in range(d)])
        self.out = init(c, k)

    def named_tensors(self):
        """The tensors in file order: per block its conv, scale and shift; then the output conv."""
        tensors = [t for i in range(self.arch.layers)
                   for t in (self.weight[i], self.scale[i], self.shift[i])] + [self.out]
        return [(name, t) for (name, _), t in zip(tensor_shapes(self.arch), tensors)]

    def forward(self, z: torch.Tensor, params=None, fused: bool = False) -> torch.Tensor:
        # params: optional list of tensors in named_tensors() order, used instead of the
        # module's own (quantization-aware training passes rounded copies through here).
        # fused: output_conv's form for torch.compile.
        return decoder_program(z, *self.terms(params), fused)

    def terms(self, params=None) -> tuple:
        """decoder_program's arguments, None for the terms this parametrisation lacks (the biases)."""
        p = params if params is not None else [t for _, t in self.named_tensors()]
        return p[0:-1:3], None, p[1:-1:3], p[2:-1:3], p[-1], None

    def program_args(self, params) -> tuple:
        """decoder_program's arguments in full: the absent biases as zeros (_neutral)."""
        d = self.arch.layers
        p = _plain(params)
        zeros = _neutral(self, p[-1], [(self.bank, d - 1, self.arch.channels), (self.bank, self.arch.out_channels)], 0.0)
        return p[0:-1:3], zeros[0], p[1:-1:3], p[2:-1:3], p[-1], zeros[1]

    @torch.no_grad()
    def fold(self) -> "FoldedDeepDecoder":
        """The same network with each normalisation's affine folded into the next conv:
        W' (g * x + b) = (W' diag g) x + W' b, so block i+1 gets weight W' diag(g_i) and bias
        W' b_i (a bias before the upsampling is a bias after it: bilinear weights sum to 1)."""
        arch = replace(self.arch, folded=True)
        f = FoldedDeepDecoder(arch, self.bank).to(self.out.device, self.out.dtype)  # a float64 net stays float64
        d = self.arch.layers
        nxt = [self.weight[i] for i in range(1, d)] + [self.out]
        f.weight[0].copy_(self.weight[0])
        for i in range(d):
            w = nxt[i] * self.scale[i][:, None, :]
            bias = torch.bmm(nxt[i], self.shift[i][:, :, None])[..., 0]
            if i + 1 < d:
                f.weight[i + 1].copy_(w)
                f.bias[:, i].copy_(bias)
            else:
                f.out.copy_(w)
                f.out_bias.copy_(bias)
        return f


class FoldedDeepDecoder(nn.Module):
    """The Deep Decoder in its stored form (Architecture.folded): block i is a 1x1 conv with a
    bias (none in block 0), upsampling, ReLU and a normalisation without affine; the output
    conv has a bias. Made by DeepDecoder.fold(), or from a file by the decoder."""

    def __init__(self, arch: Architecture, bank: int = 1):
        super().__init__()
        self.arch, self.bank = arch, bank
        k, d, c = arch.channels, arch.layers, arch.out_channels
        self.weight = nn.ParameterList([nn.Parameter(torch.zeros(bank, k, k)) for _ in range(d)])
        self.bias = nn.Parameter(torch.zeros(bank, d - 1, k))
        self.out = nn.Parameter(torch.zeros(bank, c, k))
        self.out_bias = nn.Parameter(torch.zeros(bank, c))

    def named_tensors(self):
        tensors = list(self.weight) + ([self.bias] if self.arch.layers > 1 else []) + [self.out, self.out_bias]
        return [(name, t) for (name, _), t in zip(tensor_shapes(self.arch), tensors)]

    def forward(self, z: torch.Tensor, params=None, fused: bool = False) -> torch.Tensor:
        return decoder_program(z, *self.terms(params), fused)

    def terms(self, params=None) -> tuple:
        """decoder_program's arguments, None for the terms this parametrisation lacks (the
        normalisations' scales and shifts)."""
        p = params if params is not None else [t for _, t in self.named_tensors()]
        d = self.arch.layers
        return p[:d], p[d] if d > 1 else None, None, None, p[-2], p[-1]

    def program_args(self, params) -> tuple:
        """decoder_program's arguments in full: the plain normalisation's scales as ones and
        shifts as zeros (_neutral); one layer's empty bias too."""
        d, k, bank = self.arch.layers, self.arch.channels, self.bank
        p = _plain(params)
        ones = _neutral(self, p[0], [(bank, k)] * d, 1.0, "ones")
        zeros = _neutral(self, p[0], [(bank, k)] * d + ([(bank, 0, k)] if d == 1 else []), 0.0)
        bias = p[d] if d > 1 else zeros[d]
        return p[:d], bias, ones, zeros[:d], p[-2], p[-1]


def decoder_program(z, weights, biases, scales, shifts, out_w, out_b, fused: bool = False) -> torch.Tensor:
    """The Deep Decoder in the form both parametrisations share: block i is a 1x1 conv, a bias
    (biases[:, i-1], blocks 1..d-1), the x2 upsampling (all but the last block), ReLU and the
    normalisation with scales[i] and shifts[i]; then the output conv and its bias. The trained
    net has no biases, the stored (folded) one no scales or shifts: None leaves a term out.
    Given every term (program_args), the fit and the quantization-aware fine-tuning run the
    same function on tensors of the same shapes, so torch.compile traces and compiles it once
    for both (compiling.compiled): the fine-tuning used to cost a second cold compile (~11 s on an
    H200, ~25 s on this CPU) for a few hundred steps."""
    x, d = z, len(weights)
    for i in range(d):
        x = _normalised(_conv(x, i, weights, biases), i, d, scales, shifts)
    y = output_conv(out_w, x, fused)
    return torch.sigmoid(y if out_b is None else y + out_b[:, :, None, None].to(y.dtype))


def decoder_head(z, weights, biases, scales, shifts) -> torch.Tensor:
    """decoder_program up to the full-size tail: blocks 0..d-3 whole, then block d-2's conv
    and bias, at half the image's size. The "triton" preset runs the rest as hand-written
    kernels (tail.tail) that never store a full-size activation; d >= 2."""
    x, d = z, len(weights)
    for i in range(d - 2):
        x = _normalised(_conv(x, i, weights, biases), i, d, scales, shifts)
    return _conv(x, d - 2, weights, biases)


def _conv(x, i, weights, biases):
    """Block i's 1x1 conv and, from block 1 on, its bias."""
    bsz, k, h, wd = x.shape
    w = weights[i]
    x = torch.bmm(w, x.reshape(bsz, k, h * wd)).view(bsz, w.shape[1], h, wd)
    if i > 0 and biases is not None:  # in the activation's dtype: a bf16 fit stays bf16
        x = x + biases[:, i - 1, :, None, None].to(x.dtype)
    return x


def _normalised(x, i, d, scales, shifts):
    """The rest of block i after its conv: the upsampling (all but the last block), ReLU and
    the normalisation with scales[i] and shifts[i]."""
    if i < d - 1:
        x = upsample2x(x)
    x = F.relu(x)
    shape = x.shape
    g = None if scales is None else scales[i].reshape(-1)
    b = None if shifts is None else shifts[i].reshape(-1)
    return channel_norm(x.reshape(1, -1, *shape[2:]), g, b).view(shape)


def _plain(params) -> list:
    """The tensors as plain tensors: torch.compile guards on a tensor's type, so a Parameter
    (the fit's own weights) and a tensor (the fine-tuning's rounded copies) would compile the
    same graph twice. A view costs no copy and keeps the gradient flowing to the Parameter."""
    return [t.view_as(t) if isinstance(t, nn.Parameter) else t for t in params]


def _neutral(model, like: torch.Tensor, shapes, value: float, name: str = "zeros") -> list:
    """Constant tensors (ones or zeros) for the terms a parametrisation lacks, made once per
    device and dtype and kept on the model. They require a gradient only so that the compiled
    graph is the same as where the term is trained. Nothing steps them, and their gradient is
    dropped as it lands (a hook): kept, it would grow every step, and under CUDA graphs it
    would be a graph output that the next replay overwrites."""
    key = (name, like.device, like.dtype, tuple(shapes))
    cache = model.__dict__.setdefault("_ddc_neutral", {})
    if key not in cache:
        cache[key] = [torch.full(s, value, device=like.device, dtype=like.dtype).requires_grad_() for s in shapes]
        for t in cache[key]:
            t.register_post_accumulate_grad_hook(_drop_grad)
    return cache[key]


def _drop_grad(t: torch.Tensor) -> None:
    t.grad = None
