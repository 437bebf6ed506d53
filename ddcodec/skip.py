"""The Deep Image Prior skip network (Ulyanov et al., CVPR 2018, supplementary: "skip"), the
comparison point for the Deep Decoder: an encoder-decoder with skip connections, 3x3 convs with
reflection padding, stride-2 downsampling, bilinear upsampling, LeakyReLU(0.2), BatchNorm on
the image's own statistics, sigmoid output; input 32 channels of U[0, 0.1) at full size.
Defaults (Architecture(kind="skip", channels=128, layers=5)): 5 scales of 128 channels with 4
skip channels, about 2.2 M parameters.

Written functionally over a list of tensors with a leading bank dimension, like the Deep
Decoder, so the same fitting, quantization and file code serves both. Bank members run one
after the other: this net is for comparison, not for speed.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .nets import channel_norm, upsample2x

SKIP_CHANNELS = 4
INPUT_CHANNELS = 32


def skip_shapes(arch) -> list:
    """(name, shape) of every tensor in file order, without the bank dimension."""
    c, s, out = arch.channels, SKIP_CHANNELS, []

    def conv(name, cout, cin, k):
        out.extend([(f"{name}.w", (cout, cin, k, k)), (f"{name}.b", (cout,)),
                    (f"{name}.scale", (cout,)), (f"{name}.shift", (cout,))])

    for i in range(arch.layers):
        cin = INPUT_CHANNELS if i == 0 else c
        conv(f"s{i}.skip", s, cin, 1)
        conv(f"s{i}.down1", c, cin, 3)
        conv(f"s{i}.down2", c, c, 3)
        out.extend([(f"s{i}.cat.scale", (s + c,)), (f"s{i}.cat.shift", (s + c,))])
        conv(f"s{i}.up", c, s + c, 3)
        conv(f"s{i}.up1", c, c, 1)
    return out + [("out.w", (arch.out_channels, c, 1, 1)), ("out.b", (arch.out_channels,))]


class SkipNet(nn.Module):
    def __init__(self, arch, seeds=(0,)):
        super().__init__()
        self.arch, self.bank = arch, len(seeds)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        shapes = skip_shapes(arch)
        tensors = []
        for idx, (name, shape) in enumerate(shapes):
            if name.endswith(".scale"):
                t = torch.ones(self.bank, *shape)
            elif name.endswith(".shift"):
                t = torch.zeros(self.bank, *shape)
            else:  # torch's default conv init, U(+-1/sqrt(fan_in)) for weight and bias
                fan_in = math.prod(shape[1:]) if name.endswith(".w") else math.prod(shapes[idx - 1][1][1:])
                u = torch.stack([torch.rand(*shape, generator=g) for g in gens])
                t = (u * 2 - 1) / math.sqrt(fan_in)
            tensors.append(nn.Parameter(t))
        self.params = nn.ParameterList(tensors)
        self.names = [n for n, _ in shapes]

    def named_tensors(self):
        return list(zip(self.names, self.params))

    def forward(self, z, params=None):
        p = list(params) if params is not None else list(self.params)
        outs = [self._member(z[b:b + 1], [t[b] for t in p]) for b in range(z.shape[0])]
        return torch.cat(outs)

    def _member(self, z, p):
        def conv(x, at, stride=1):
            w, b, g, s = p[at:at + 4]
            if w.shape[-1] == 3:
                x = F.pad(x, (1, 1, 1, 1), mode="reflect" if min(x.shape[-2:]) > 1 else "replicate")
            return F.leaky_relu(_bn(F.conv2d(x, w, b, stride=stride), g, s), 0.2)

        def level(x, i):
            at = _PER_SCALE * i  # skip, down1, down2 (4 tensors each), cat (2), up, up1 (4 each)
            skip = conv(x, at)
            d = conv(conv(x, at + 4, stride=2), at + 8)
            if i + 1 < self.arch.layers:
                d = level(d, i + 1)
            d = upsample2x(d)[..., :skip.shape[-2], :skip.shape[-1]]
            y = _bn(torch.cat([skip, d], 1), p[at + 12], p[at + 13])
            return conv(conv(y, at + 14), at + 18)

        return torch.sigmoid(F.conv2d(level(z, 0), p[-2], p[-1]))


_PER_SCALE = 22


def _bn(x, g, s):
    return channel_norm(x, g, s)
