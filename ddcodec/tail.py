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
"""
from dataclasses import dataclass

import torch

import triton
import triton.language as tl

from .errors import ConfigError
from .nets import BN_EPS, _conv, _normalised, output_conv


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


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    # PREC 2: bf16 operands (autocast's products); 1: TF32; 0: full fp32. The sums are fp32.
    # 3: bf16 operands emulated in fp32 (a product of two bf16 values is exact in fp32), for
    # Triton's interpreter, whose bf16 dot returns garbage (3.9: 1e10 for products of order 1)
    # and whose bf16 cast does not round to nearest.
    if PREC == 2:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PREC == 3:
        return tl.dot(_bf16_rounded(a), _bf16_rounded(b), input_precision="ieee")
    elif PREC == 1:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _bf16_rounded(x):
    """x rounded to the nearest bf16 (ties to even), kept in fp32: the GPU's conversion, in
    integer arithmetic that the interpreter does exactly."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _upsampled(y_ptr, b, ch, cm, p, pm, k, h, w):
    """u = up(y) at full-size pixels p ([T] flat indices), [K, T] in fp32: bilinear x2 with
    align_corners=False, edges clamped, rows first as nets.upsample2x does."""
    W2 = 2 * w
    r = p // W2
    col = p % W2
    i = r // 2
    j = col // 2
    i2 = tl.where(r % 2 == 0, tl.maximum(i - 1, 0), tl.minimum(i + 1, h - 1))
    j2 = tl.where(col % 2 == 0, tl.maximum(j - 1, 0), tl.minimum(j + 1, w - 1))
    base = y_ptr + (b * k + ch[:, None]) * (h * w)
    m = cm[:, None] & pm[None, :]
    y11 = tl.load(base + (i * w + j)[None, :], mask=m, other=0.0).to(tl.float32)
    y21 = tl.load(base + (i2 * w + j)[None, :], mask=m, other=0.0).to(tl.float32)
    y12 = tl.load(base + (i * w + j2)[None, :], mask=m, other=0.0).to(tl.float32)
    y22 = tl.load(base + (i2 * w + j2)[None, :], mask=m, other=0.0).to(tl.float32)
    return 0.75 * (0.75 * y11 + 0.25 * y21) + 0.25 * (0.75 * y12 + 0.25 * y22)


@triton.jit
def _chan(count, mean, m2, x, pm):
    """Chan's update of running per-channel (count, mean, sum of squared deviations) with a
    tile x [K, T] whose valid pixels are pm."""
    n = tl.sum(pm.to(tl.float32), 0)
    xm = tl.where(pm[None, :], x, 0.0)
    tmean = tl.sum(xm, 1) / tl.maximum(n, 1.0)
    d = tl.where(pm[None, :], x - tmean[:, None], 0.0)
    tm2 = tl.sum(d * d, 1)
    total = count + n
    delta = tmean - mean
    mean = mean + delta * (n / tl.maximum(total, 1.0))
    m2 = m2 + tm2 + delta * delta * (count * n / tl.maximum(total, 1.0))
    return total, mean, m2


@triton.jit
def _tail_pass(y_ptr, ga_ptr, ba_ptr, ma_ptr, ra_ptr, wb_ptr, cb_ptr, gb_ptr, bb_ptr, mb_ptr, rb_ptr,
               wo_ptr, co_ptr, gx_ptr, s1b_ptr, s2b_ptr, s1a_ptr, s2a_ptr,
               o1_ptr, o2_ptr, o3_ptr, o4_ptr,
               k, h, w, P, nch, chunk_size,
               K: tl.constexpr, C: tl.constexpr, T: tl.constexpr,
               PREC: tl.constexpr, PASS: tl.constexpr):
    """One pass over a chunk of one member's pixels. PASS 0: statistics of a; 1: of c;
    2: the image; 3: the last normalisation's backward sums and the output conv's gradients;
    4: block d-1's gradients and block d-2's normalisation sums; 5: the gradient at u.
    s1 / s2 are a normalisation's mean of dq and of dq * qhat (dn and nhat for a), per channel."""
    chunk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ch = tl.arange(0, K)
    cm = ch < k
    vec = b * k + ch
    start = chunk * chunk_size
    zero = tl.zeros([K], dtype=tl.float32)
    if PASS >= 1:
        ga = tl.load(ga_ptr + vec, mask=cm, other=0.0)
        ba = tl.load(ba_ptr + vec, mask=cm, other=0.0)
        ma = tl.load(ma_ptr + vec, mask=cm, other=0.0)
        ra = tl.load(ra_ptr + vec, mask=cm, other=0.0)
        wmask = cm[:, None] & cm[None, :]
        wbase = wb_ptr + b * k * k
        wb = tl.load(wbase + ch[:, None] * k + ch[None, :], mask=wmask, other=0.0)
        cb = tl.load(cb_ptr + vec, mask=cm, other=0.0)
    if PASS >= 2:
        gb = tl.load(gb_ptr + vec, mask=cm, other=0.0)
        bb = tl.load(bb_ptr + vec, mask=cm, other=0.0)
        mb = tl.load(mb_ptr + vec, mask=cm, other=0.0)
        rb = tl.load(rb_ptr + vec, mask=cm, other=0.0)
    if PASS >= 4:
        wbt = tl.load(wbase + ch[None, :] * k + ch[:, None], mask=wmask, other=0.0)  # W_b^T
        s1b = tl.load(s1b_ptr + vec, mask=cm, other=0.0)
        s2b = tl.load(s2b_ptr + vec, mask=cm, other=0.0)
    if PASS == 5:
        s1a = tl.load(s1a_ptr + vec, mask=cm, other=0.0)
        s2a = tl.load(s2a_ptr + vec, mask=cm, other=0.0)
    count = tl.sum(zero, 0)
    acc1 = zero
    acc2 = zero
    acc3 = zero
    if PASS == 3:
        acc_wo = tl.zeros([K, 16], dtype=tl.float32)  # column o: dW_o[o, :]; 16 wide, a power of two >= C
        acc_co = tl.zeros([16], dtype=tl.float32)
    if PASS == 4:
        acc_wb = tl.zeros([K, K], dtype=tl.float32)
    oc = tl.arange(0, 16)
    # a runtime bound: one compiled kernel serves every chunk size, and the last chunk stops at P
    for s in range(0, tl.minimum(chunk_size, P - start), T):
        p = start + s + tl.arange(0, T)
        pm = p < P
        u = _upsampled(y_ptr, b, ch, cm, p, pm, k, h, w)
        a = tl.maximum(u, 0.0)
        if PASS == 0:
            count, acc1, acc2 = _chan(count, acc1, acc2, a, pm)
        else:
            ahat = (a - ma[:, None]) * ra[:, None]
            n = ga[:, None] * ahat + ba[:, None]
            v = _dot(wb, n, PREC) + cb[:, None]
            c = tl.maximum(v, 0.0)
            if PASS == 1:
                count, acc1, acc2 = _chan(count, acc1, acc2, c, pm)
            else:
                chat = (c - mb[:, None]) * rb[:, None]
                q = gb[:, None] * chat + bb[:, None]
                dq = tl.zeros([K, T], dtype=tl.float32)
                for o in tl.static_range(C):
                    wo = tl.load(wo_ptr + (b * C + o) * k + ch, mask=cm, other=0.0)
                    xo = tl.sigmoid(tl.sum(wo[:, None] * q, 0) + tl.load(co_ptr + b * C + o))
                    if PASS == 2:
                        tl.store(o1_ptr + (b * C + o) * P + p, xo, mask=pm)
                    else:
                        gx = tl.load(gx_ptr + (b * C + o) * P + p, mask=pm, other=0.0)
                        do = gx * xo * (1.0 - xo)  # the sigmoid's backward; 0 off the image
                        dq += wo[:, None] * do[None, :]
                        if PASS == 3:
                            sel = (oc == o).to(tl.float32)
                            acc_wo += tl.sum(q * do[None, :], 1)[:, None] * sel[None, :]
                            acc_co += tl.sum(do, 0) * sel
                if PASS == 3:
                    acc1 += tl.sum(dq, 1)
                    acc2 += tl.sum(dq * chat, 1)
                if PASS >= 4:
                    dc = (rb * gb)[:, None] * (dq - s1b[:, None] - chat * s2b[:, None])
                    dv = tl.where((v > 0.0) & pm[None, :], dc, 0.0)
                    dn = _dot(wbt, dv, PREC)
                    if PASS == 4:
                        acc_wb += _dot(dv, tl.trans(n), PREC)
                        acc1 += tl.sum(dv, 1)  # c_b's gradient
                        acc2 += tl.sum(dn, 1)
                        acc3 += tl.sum(dn * ahat, 1)
                    else:
                        da = (ra * ga)[:, None] * (dn - s1a[:, None] - ahat * s2a[:, None])
                        gu = tl.where((u > 0.0) & pm[None, :], da, 0.0)
                        m = cm[:, None] & pm[None, :]
                        tl.store(o1_ptr + (b * k + ch[:, None]) * P + p[None, :],
                                 gu.to(o1_ptr.dtype.element_ty), mask=m)
    part = (b * nch + chunk) * K + ch
    if PASS != 2 and PASS != 5:  # 0, 1: this chunk's mean and sum of squared deviations; 3, 4: sums
        tl.store(o1_ptr + part, acc1)
        tl.store(o2_ptr + part, acc2)
    if PASS == 3:
        tl.store(o3_ptr + ((b * nch + chunk) * K + ch[:, None]) * 16 + oc[None, :], acc_wo)
        tl.store(o4_ptr + (b * nch + chunk) * 16 + oc, acc_co)
    if PASS == 4:
        tl.store(o3_ptr + ((b * nch + chunk) * K + ch[:, None]) * K + ch[None, :], acc_wb)
        tl.store(o4_ptr + part, acc3)


@triton.jit
def _tap(t, i, n):
    """Tap t (0-3) of the upsampling's adjoint along an axis of n half-size pixels: the
    full-size index 2i-1+t and its weight. Output 2i reads 3/4 of input i and 1/4 of i-1,
    output 2i+1 3/4 of i and 1/4 of i+1, the edges clamped (so output 0 reads all of input 0)."""
    if t == 0:
        wt = tl.where(i >= 1, 0.25, 0.0)
    elif t == 1:
        wt = tl.where(i == 0, 1.0, 0.75)
    elif t == 2:
        wt = tl.where(i == n - 1, 1.0, 0.75)
    else:
        wt = tl.where(i <= n - 2, 0.25, 0.0)
    return 2 * i - 1 + t, wt


@triton.jit
def _adjoint(g_ptr, out_ptr, total, h, w, BLOCK: tl.constexpr):
    """out = up^T(g): g [planes, 2h, 2w] -> out [planes, h, w], each value the weighted sum of
    the 4 x 4 full-size pixels that read it."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < total
    plane = idx // (h * w)
    rem = idx % (h * w)
    i = rem // w
    j = rem % w
    base = g_ptr + plane * (4 * h * w)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for tr in tl.static_range(4):
        r, wr = _tap(tr, i, h)
        row = tl.zeros([BLOCK], dtype=tl.float32)
        for tc in tl.static_range(4):
            c, wc = _tap(tc, j, w)
            m = valid & (wr > 0.0) & (wc > 0.0)
            row += wc * tl.load(base + r * (2 * w) + c, mask=m, other=0.0).to(tl.float32)
        acc += wr * row
    tl.store(out_ptr + idx, acc.to(out_ptr.dtype.element_ty), mask=valid)


def _precision(y: torch.Tensor) -> int:
    if y.dtype == torch.bfloat16:
        return 3 if INTERPRETED else 2
    return 1 if y.is_cuda and torch.backends.cuda.matmul.allow_tf32 else 0


# defined for Triton's interpreter (TRITON_INTERPRET=1 at the import): the tests' CPU form
INTERPRETED = not isinstance(_tail_pass, triton.runtime.jit.JITFunction)


@triton.jit
def _stats(mean_ptr, m2_ptr, out_mean_ptr, out_rstd_ptr, k, P, nch, chunk_size, eps, K: tl.constexpr):
    """A member's mean and 1/sqrt(var + eps) per channel from its chunks' means and squared
    deviations ([B, nch, K]), merged one chunk after another by Chan's formula: one launch, in
    a fixed order (so deterministic), where torch took a dozen small ops."""
    b = tl.program_id(0).to(tl.int64)
    ch = tl.arange(0, K)
    count = tl.sum(tl.zeros([K], dtype=tl.float32), 0)
    mean = tl.zeros([K], dtype=tl.float32)
    m2 = tl.zeros([K], dtype=tl.float32)
    for c in range(0, nch):
        n = tl.minimum(P - c * chunk_size, chunk_size).to(tl.float32)
        row = (b * nch + c) * K + ch
        cmean = tl.load(mean_ptr + row)
        total = count + n
        delta = cmean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + tl.load(m2_ptr + row) + delta * delta * (count * n / total)
        count = total
    cm = ch < k
    tl.store(out_mean_ptr + b * k + ch, mean, mask=cm)
    tl.store(out_rstd_ptr + b * k + ch, 1.0 / tl.sqrt(m2 / count + eps), mask=cm)


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
