"""The Triton kernels of the full-size tail (the "triton" preset): see tail.py for what they
compute and how the passes fit together. Only @triton.jit functions live here; tail.py
launches them, wraps them as custom ops and gives them their autograd formula."""
import triton
import triton.language as tl


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
