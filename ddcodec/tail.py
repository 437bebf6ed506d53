"""The Deep Decoder's full-size tail as hand-written Triton kernels (issue 3; the "triton" preset).

A full-size step's bytes go to the last two blocks, which run at the image's own size: there
inductor and cuBLAS write and read the k x H x W activations many times a step (the `fused`
preset's step moves 19.3 of them in all by inductor's count; README, Speed on a GPU). Here that
tail, from block d-2's conv output y (half size, [B, k, h, w]) to the image,
is never stored. Every pass recomputes it from y, a quarter of one activation:

    u = up(y)   a = relu(u)   n = g_a (a - m_a) r_a + b_a           block d-2
    v = W_b n + c_b           c = relu(v)   q = g_b (c - m_b) r_b + b_b   block d-1
    x = sigmoid(W_o q + c_o)

m and r are each normalisation's mean and 1/sqrt(var + eps) over the member's pixels, so the
forward takes three passes (the statistics of a, those of c, the image) and the backward three
more (the two normalisations' backward sums in turn, then the gradient at u) and the
upsampling's adjoint. The only full-size tensors written are the image and, once, the gradient
at u. The 1x1 convs are tl.dot on [k, T] tiles of pixels, recomputed in each pass: with k=64
that is ~26 GFLOP per full-size image a step, ~36 us at the bf16 rate measured on an H200
(722 TFLOP/s), for 207 MB moved in bf16 where the whole `fused` step moved ~1 GB per image.

Each program walks a chunk of pixels of one member and writes one partial per chunk
(the statistics as a mean and sum of squared deviations, combined by Chan's formula; the
weight gradients as sums); a small kernel (the statistics) or torch (the sums) reduces the
partials in a fixed order, so a step is deterministic: no atomics. The statistics' two-level form also keeps the variance accurate
when it is small against the squared mean, where sum-of-squares formulas cancel.

The @triton.jit kernels are in tail_jit.py; this module launches them (_Geometry), wraps
them as custom ops with their autograd formula, and checks them (reference, sm90_report).
"""
from dataclasses import dataclass

import torch

import triton

from .errors import ConfigError
from .nets import BN_EPS, _conv, _normalised, output_conv
from .tail_jit import _adjoint, _stats, _tail_pass  # launched from here; speed.py's dry run swaps them


@dataclass(frozen=True)
class Launch:
    """Tile shapes: T pixels a tile (a power of two, >= 16 for tl.dot), chunk pixels a
    program (a multiple of T), and the warps a program. At k=64 the default's passes all
    compile for sm_90 without spilling registers (ptxas, counted on the CPU: tests/
    test_tail.py; 229-239 registers in the backward's widest passes). 32 pixels with 8 warps
    spilled 8 bytes in one pass, with 16 warps 108-272 in three, and 64 pixels with 4 or 8
    warps hundreds. Which runs fastest is for a GPU to say (`speed.py --part tail`)."""
    tile: int = 16
    chunk: int = 2048
    warps: int = 4

    def __post_init__(self):
        power = lambda n: n >= 1 and n & (n - 1) == 0  # noqa: E731
        if not (power(self.tile) and self.tile >= 16 and self.chunk >= self.tile
                and self.chunk % self.tile == 0 and power(self.warps) and self.warps <= 16):
            raise ConfigError(f"bad tail launch {self}: tile a power of two >= 16, chunk a multiple "
                              "of it, warps a power of two up to 16")


LAUNCH = Launch()  # the benchmark's --part tail times others


def _precision(y: torch.Tensor) -> int:
    if y.dtype == torch.bfloat16:
        return 3 if INTERPRETED else 2
    return 1 if y.is_cuda and torch.backends.cuda.matmul.allow_tf32 else 0


# defined for Triton's interpreter (TRITON_INTERPRET=1 at the import): the tests' CPU form
INTERPRETED = not isinstance(_tail_pass, triton.runtime.jit.JITFunction)


# The kernels are wrapped as custom ops (torch.library): to torch.compile each is one opaque
# call whose output shapes the fake form gives without running it, so a whole step, head and
# tail, traces into one graph. Then the small torch ops between the passes (the partials'
# sums, the scalings) fuse into inductor's kernels, and the step can be captured as CUDA graphs
# (the "triton-graphs" preset), where one image is bound by launches. Eager calls run the same
# ops. Ints carry the Launch, which an op's schema cannot.
Tensor = torch.Tensor


@torch.library.custom_op("ddcodec::tail_forward", mutates_args=())
def _forward(y: Tensor, ga: Tensor, ba: Tensor, wb: Tensor, cb: Tensor, gb: Tensor, bb: Tensor,
             wo: Tensor, co: Tensor, tile: int, chunk: int, warps: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(the image, m_a, r_a, m_b, r_b): three passes and two merges of the statistics."""
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    y = y.contiguous()
    pa = geo.parts()
    geo.run(0, y, ga, ba, None, None, wb, cb, gb, bb, None, None, wo, co, outs=pa)
    ma, ra = geo.statistics(*pa)
    pb = geo.parts()
    geo.run(1, y, ga, ba, ma, ra, wb, cb, gb, bb, None, None, wo, co, outs=pb)
    mb, rb = geo.statistics(*pb)
    x = geo.image()
    geo.run(2, y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, outs=(x,))
    return x, ma, ra, mb, rb


@_forward.register_fake
def _forward_shapes(y, ga, ba, wb, cb, gb, bb, wo, co, tile, chunk, warps):
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    return (geo.image(),) + tuple(geo.stat() for _ in range(4))


@torch.library.custom_op("ddcodec::tail_output_sums", mutates_args=())
def _output_sums(y: Tensor, ga: Tensor, ba: Tensor, ma: Tensor, ra: Tensor, wb: Tensor, cb: Tensor,
                 gb: Tensor, bb: Tensor, mb: Tensor, rb: Tensor, wo: Tensor, co: Tensor, gx: Tensor,
                 tile: int, chunk: int, warps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pass 3's partials per chunk: the sums of dq and dq * qhat, W_o's and c_o's gradients."""
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    outs = _output_sums_shapes(y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx, tile, chunk, warps)
    geo.run(3, y.contiguous(), ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx=gx, outs=outs)
    return outs


@_output_sums.register_fake
def _output_sums_shapes(y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx, tile, chunk, warps):
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    return geo.parts() + (geo.buffer(geo.K, 16), geo.buffer(16))


@torch.library.custom_op("ddcodec::tail_middle_sums", mutates_args=())
def _middle_sums(y: Tensor, ga: Tensor, ba: Tensor, ma: Tensor, ra: Tensor, wb: Tensor, cb: Tensor,
                 gb: Tensor, bb: Tensor, mb: Tensor, rb: Tensor, wo: Tensor, co: Tensor, gx: Tensor,
                 s1b: Tensor, s2b: Tensor, tile: int, chunk: int, warps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pass 4's partials per chunk: c_b's gradient (the sum of dv), the sums of dn and
    dn * nhat, W_b's gradient."""
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    outs = _middle_sums_shapes(y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx, s1b, s2b, tile, chunk, warps)
    t1, t2, dwb, t3 = outs
    geo.run(4, y.contiguous(), ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx=gx, s1b=s1b, s2b=s2b,
            outs=(t1, t2, dwb, t3))
    return outs


@_middle_sums.register_fake
def _middle_sums_shapes(y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx, s1b, s2b, tile, chunk, warps):
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    return geo.parts() + (geo.buffer(geo.K, geo.K), geo.buffer(geo.K))


@torch.library.custom_op("ddcodec::tail_input_grad", mutates_args=())
def _input_grad(y: Tensor, ga: Tensor, ba: Tensor, ma: Tensor, ra: Tensor, wb: Tensor, cb: Tensor,
                gb: Tensor, bb: Tensor, mb: Tensor, rb: Tensor, wo: Tensor, co: Tensor, gx: Tensor,
                s1b: Tensor, s2b: Tensor, s1a: Tensor, s2a: Tensor, tile: int, chunk: int, warps: int) -> Tensor:
    """The gradient at y: pass 5 writes it at u, full size and in y's dtype, and the
    upsampling's adjoint takes it to y."""
    geo = _Geometry(y, wo.shape[1], Launch(tile, chunk, warps))
    bsz, k, h, w = y.shape
    gu = torch.empty(bsz, k, 2 * h, 2 * w, device=y.device, dtype=y.dtype)
    geo.run(5, y.contiguous(), ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx=gx, s1b=s1b, s2b=s2b,
            s1a=s1a, s2a=s2a, outs=(gu,))
    gy = torch.empty(y.shape, device=y.device, dtype=y.dtype)
    block = 1024
    _adjoint[(triton.cdiv(gy.numel(), block),)](gu, gy, gy.numel(), h, w, BLOCK=block)
    return gy


@_input_grad.register_fake
def _input_grad_shape(y, *rest):
    return torch.empty(y.shape, device=y.device, dtype=y.dtype)


def _keep(ctx, inputs, output):
    y, ga, ba, wb, cb, gb, bb, wo, co, tile, chunk, warps = inputs
    _, ma, ra, mb, rb = output
    # the statistics are outputs only so that the backward passes need not recompute them
    ctx.mark_non_differentiable(ma, ra, mb, rb)
    ctx.save_for_backward(y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co)
    ctx.launch = (tile, chunk, warps)


def _backward(ctx, gx, *_stats_grads):
    """The three backward passes and the adjoint, with torch reducing each pass's partials in
    a fixed order (traced into the backward graph under torch.compile, where inductor fuses
    these small ops)."""
    args = ctx.saved_tensors
    y, wo = args[0], args[11]
    k, c = y.shape[1], wo.shape[1]
    n = float(4 * y.shape[2] * y.shape[3])
    gx = gx.float().contiguous()
    s1, s2, dwo, dco = _output_sums(*args, gx, *ctx.launch)
    db_b, dg_b = s1.sum(1)[:, :k], s2.sum(1)[:, :k]
    dwo = dwo.sum(1)[:, :k, :c].transpose(1, 2)
    dco = dco.sum(1)[:, :c]
    s1b, s2b = (db_b / n).contiguous(), (dg_b / n).contiguous()
    t1, t2, dwb, t3 = _middle_sums(*args, gx, s1b, s2b, *ctx.launch)
    dcb = t1.sum(1)[:, :k]
    db_a, dg_a = t2.sum(1)[:, :k], t3.sum(1)[:, :k]
    dwb = dwb.sum(1)[:, :k, :k]
    gy = _input_grad(*args, gx, s1b, s2b, (db_a / n).contiguous(), (dg_a / n).contiguous(), *ctx.launch)
    return gy, dg_a, db_a, dwb, dcb, dg_b, db_b, dwo, dco, None, None, None


_forward.register_autograd(_backward, setup_context=_keep)


class _Geometry:
    """The launch shape of one tail: padded width K, chunks, and the partial buffers."""

    def __init__(self, y, c: int, launch: Launch):
        self.y, self.c, self.launch = y, c, launch
        self.bsz, self.k, self.h, self.w = y.shape
        self.K = max(16, triton.next_power_of_2(self.k))
        self.P = 4 * self.h * self.w
        self.nch = triton.cdiv(self.P, launch.chunk)

    def statistics(self, part_mean, part_m2):
        """(mean, 1/sqrt(var + eps)), [B, k] each, from a statistics pass's partials."""
        mean, rstd = self.stat(), self.stat()
        _stats[(self.bsz,)](part_mean, part_m2, mean, rstd, self.k, self.P, self.nch, self.launch.chunk,
                            BN_EPS, K=self.K)
        return mean, rstd

    def buffer(self, *shape):
        return torch.empty(self.bsz, self.nch, *shape, device=self.y.device, dtype=torch.float32)

    def image(self):
        return torch.empty(self.bsz, self.c, 2 * self.h, 2 * self.w, device=self.y.device, dtype=torch.float32)

    def stat(self):
        return torch.empty(self.bsz, self.k, device=self.y.device, dtype=torch.float32)

    def parts(self):
        return self.buffer(self.K), self.buffer(self.K)

    def run(self, stage, y, ga, ba, ma, ra, wb, cb, gb, bb, mb, rb, wo, co, gx=None,
            s1b=None, s2b=None, s1a=None, s2a=None, outs=()):
        # a pass reads only what its stage needs; any tensor stands in for the rest
        fill = lambda t: y if t is None else t  # noqa: E731
        o = [fill(t) for t in outs] + [y] * (4 - len(outs))
        grid = (self.nch, self.bsz)
        _tail_pass[grid](y, ga, ba, fill(ma), fill(ra), wb, cb, gb, bb, fill(mb), fill(rb),
                         wo, co, fill(gx), fill(s1b), fill(s2b), fill(s1a), fill(s2a), *o,
                         self.k, self.h, self.w, self.P, self.nch, self.launch.chunk,
                         K=self.K, C=self.c, T=self.launch.tile,
                         PREC=_precision(y), PASS=stage, num_warps=self.launch.warps)


def tail(y, g_a, b_a, w_b, c_b, g_b, b_b, w_o, c_o, launch: Launch = None) -> torch.Tensor:
    """The image from block d-2's conv output y [B, k, h, w] (its bias added): upsampling,
    ReLU and normalisation (scale g_a, shift b_a, [B, k]); block d-1's conv W_b [B, k, k] and
    bias c_b [B, k], ReLU and normalisation (g_b, b_b); the output conv W_o [B, c, k] with bias
    c_o [B, c]; the sigmoid. Returns [B, c, 2h, 2w] in fp32, differentiable in every input."""
    launch = launch or LAUNCH
    small = [t.float().contiguous() for t in (g_a, b_a, w_b, c_b, g_b, b_b, w_o, c_o)]  # differentiable casts
    return _forward(y.contiguous(), *small, launch.tile, launch.chunk, launch.warps)[0]


def reference(y, g_a, b_a, w_b, c_b, g_b, b_b, w_o, c_o) -> torch.Tensor:
    """What tail computes, through nets' own pieces of decoder_program: the function the fit's
    other presets run, which the kernels must match (and which torch.compile makes of it is
    what the benchmark times them against)."""
    x = _normalised(y, 0, 2, [g_a, g_b], [b_a, b_b])  # block d-2 after its conv
    x = _conv(x, 1, [None, w_b], c_b[:, None, :])
    x = output_conv(w_o, _normalised(x, 1, 2, [g_a, g_b], [b_a, b_b]))
    return torch.sigmoid(x + c_o[:, :, None, None].to(x.dtype))


def sm90_report(k: int = 64, c: int = 3, launch: Launch = None, ieee: bool = False) -> list:
    """Compile every pass for an H100/H200 (sm_90) without a GPU, with the ptxas that Triton
    carries, and report each kernel's registers, spilled bytes and shared memory, and whether
    its products use the tensor cores (wgmma). A check of the GPU's code on any machine with
    Triton: a spill or a failed compile shows here, before a GPU session is spent on it.
    ieee: also the full-fp32 products of a fit without TF32, which use no tensor cores and, at
    k=64, spill 408-1224 bytes in passes 1-5 with the default launch (12-268 with 8 warps)."""
    import inspect
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    launch = launch or LAUNCH
    if INTERPRETED:  # the interpreter compiles nothing: ask a
        # fresh process, where the same source defines compilable kernels
        import json
        import os
        import sys
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        code = ("import json; from ddcodec import tail; "
                f"print(json.dumps(tail.sm90_report({k}, {c}, tail.{launch!r}, {ieee})))")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    K = max(16, triton.next_power_of_2(k))
    consts = {"K": K, "C": c, "T": launch.tile}
    ptxas = get_ptxas(90).path
    # fp32 is a TF32 fit's; ieee (full fp32 products, a fit without TF32) only when asked
    dtypes = ("fp32", "bf16") + (("ieee",) if ieee else ())
    jobs = [(stage, dtype) for stage in range(6) for dtype in dtypes] + [("adjoint", "fp32"), ("stats", "fp32")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage, dtype in jobs:
            if stage == "adjoint":
                fn, warps, const = _adjoint, 4, {"BLOCK": 1024}
            elif stage == "stats":
                fn, warps, const = _stats, 4, {"K": K}
            else:
                fn, warps = _tail_pass, launch.warps
                const = dict(consts, PREC={"bf16": 2, "fp32": 1, "ieee": 0}[dtype], PASS=stage)
            bf16_ptrs = ("y_ptr", "o1_ptr") if stage == 5 else ("y_ptr",)
            signature = {}
            for name in inspect.signature(fn.fn).parameters:
                if name in const:
                    signature[name] = "constexpr"
                elif name == "eps":
                    signature[name] = "fp32"
                elif name.endswith("_ptr"):
                    signature[name] = "*bf16" if dtype == "bf16" and name in bf16_ptrs else "*fp32"
                else:
                    signature[name] = "i32"
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=const),
                                    target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            ptx = Path(tmp) / "k.ptx"
            ptx.write_text(kernel.asm["ptx"])
            log = subprocess.run([ptxas, "-v", "-arch=sm_90a", str(ptx), "-o", str(Path(tmp) / "k.cubin")],
                                 capture_output=True, text=True, check=True).stderr
            rows.append({"pass": stage, "dtype": dtype, "warps": warps,
                         "registers": int(re.search(r"Used (\d+) registers", log).group(1)),
                         "spill_bytes": sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", log)),
                         "shared_bytes": kernel.metadata.shared,
                         "tensor_cores": "wgmma" in kernel.asm["ptx"]})
    return rows
