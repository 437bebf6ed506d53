"""The "triton" preset's tail kernels alone (ddcodec/tail.py; `speed.py --part tail`).

First whether they compute the tail at full size (768x512, k=64) in each precision, against
the same inputs in float64 through torch; then the tail's forward and backward timed for a
few tile shapes against torch.compile of the same function (tail.reference), for the bank
and for one image, with the bytes the kernels move against the copy bandwidth.
"""
import torch

from ddcodec import tail

from .products import _sync, best_seconds

NAMES = ("y", "g_a", "b_a", "w_b", "c_b", "g_b", "b_b", "w_o", "c_o")
# relative error bounds by precision (the device library's METHOD.md): fp32 far under 1e-3,
# TF32 near 3e-4, bf16 operands 1e-3 to 1e-2
BOUNDS = {"fp32": 1e-4, "tf32": 3e-3, "bf16": 3e-2}
# (tile, warps) makes the kernels, chunk is an argument: five launches, three compiles a
# precision. 16 pixels with 8 warps take 173-192 registers in the backward's widest passes at
# k=64 (sm90_report), against 229-239 with 4: more programs an SM, no spills.
LAUNCHES = [tail.LAUNCH, tail.Launch(16, 2048, 8), tail.Launch(32, 2048, 8), tail.Launch(16, 4096, 4),
            tail.Launch(16, 1024, 4)]


def inputs(bsz, k, h, w, c, dev, seed=0) -> list:
    """Random tail inputs of a plausible scale, in float64 on dev: y [B, k, h, w] (half size)
    and the parameters."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dev)  # noqa: E731
    return [r(bsz, k, h, w), 1 + 0.3 * r(bsz, k), 0.2 * r(bsz, k), r(bsz, k, k) / k ** 0.5, 0.1 * r(bsz, k),
            1 + 0.3 * r(bsz, k), 0.2 * r(bsz, k), r(bsz, c, k) / k ** 0.5, 0.1 * r(bsz, c)]


def _cast(xs, precision):
    """The fit's dtypes: fp32 parameters, and y in bf16 under bf16 autocast."""
    out = [t.float() for t in xs]
    if precision == "bf16":
        out[0] = out[0].bfloat16()
    return out


class _Precision:
    """TF32 products for the tf32 rows, around the forward and the backward; the fit's own
    switch (fit.precision) is the same flag. Until the twenty-fifth session the check ran its
    backward outside it, so its TF32 row checked a full fp32 backward."""

    def __init__(self, precision):
        self.tf32 = precision == "tf32"

    def __enter__(self):
        self.old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.old


def check(dev, bsz=2, k=64, h=256, w=384, c=3) -> list:
    """Relative error of the kernels' output and of every gradient against float64 torch, at
    full size, per precision; "ok" when each is under BOUNDS."""
    xs = inputs(bsz, k, h, w, c, dev)
    ref = [t.clone().requires_grad_() for t in xs]
    expect = tail.reference(*ref)
    gx = torch.randn(expect.shape, generator=torch.Generator(device="cpu").manual_seed(1),
                     dtype=torch.float64).to(dev)
    expect.backward(gx)
    rows = []
    for precision in ("bf16", "tf32", "fp32"):  # the fits' precisions first
        err = {}
        for form in ("tail", "torch"):  # the kernels, and torch's own in the same precision
            ts = [t.requires_grad_() for t in _cast(xs, precision)]
            with _Precision(precision):  # forward and backward, as in the fit; autocast the forward only
                with torch.autocast(dev.type, torch.bfloat16, enabled=form == "torch" and precision == "bf16"):
                    out = tail.tail(*ts) if form == "tail" else tail.reference(*ts)
                out.float().backward(gx.float())
            err[form] = {"out": _relative(out, expect)}
            err[form].update({n: _relative(a.grad, b.grad) for n, a, b in zip(NAMES, ts, ref)})
        rows.append({"precision": precision, "bound": BOUNDS[precision], "errors": err["tail"],
                     "torch_errors": err["torch"], "ok": _faithful(err["tail"], err["torch"], BOUNDS[precision])})
    return rows


def _faithful(ours: dict, torch_own: dict, bound: float) -> bool:
    """Each error under the precision's bound, or at most 3x torch's own in that precision: the
    gradients through two normalisations cancel, and bf16 products leave torch itself a few
    percent off float64 there."""
    return all(e < max(bound, 3 * torch_own[n]) for n, e in ours.items())


def _relative(a, b) -> float:
    a, b = a.detach().double(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def tail_bytes(bsz, k, h, w, c, elem: int, chunk: int = 2048, read_partials: bool = True) -> int:
    """Bytes the kernels move in a step: seven reads of y (three passes forward, three back,
    and the adjoint's write of dy), the image written and its gradient read three times, the
    gradient at u written once and read once; and the fp32 partials per chunk of pixels, each
    written once and, unless read_partials is False (where inductor counts the sums that read
    them), read once by the sum after it (nine [K] rows a chunk, W_o's [K, 16] and
    c_o's [16], W_b's [K, K]: at full size, k=64 and chunks of 2,048, 8.8 MB per image, 4 %
    of the 216 MB it moves a step in bf16, most of it W_b's)."""
    y, img, u = bsz * k * h * w * elem, bsz * c * 4 * h * w * 4, bsz * k * 4 * h * w * elem
    K = max(16, 1 << (k - 1).bit_length())
    chunks = bsz * -(-4 * h * w // chunk)
    partials = (1 + read_partials) * 4 * chunks * (9 * K + 16 * K + 16 + K * K)
    return 7 * y + 4 * img + 2 * u + partials


def times(dev, copy_gbs: float, configs=((24, "bf16"), (1, "tf32")), launches=LAUNCHES, reps: int = 10,
          k=64, h=256, w=384, c=3, on_row=None) -> list:
    """ms per image for the tail's forward and backward: torch.compile of tail.reference (what
    the default compile makes of it), then the kernels with each launch."""
    rows = []
    for bsz, precision in configs:
        xs = _cast(inputs(bsz, k, h, w, c, dev), precision)
        gx = torch.rand(bsz, c, 2 * h, 2 * w, device=dev)

        def step(fn, ts, precision=precision, gx=gx):  # under _Precision: as the fit, autocast around the forward alone
            for t in ts:
                t.grad = None
            with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
                out = fn(*ts)
            out.backward(gx)

        ts = [t.clone().requires_grad_() for t in xs]
        compiled = torch.compile(tail.reference, dynamic=False)
        # the kernels first: a part cut short by its time limit keeps what the fit rows use.
        # One image times only the launches that share the default's kernels (chunk is an
        # argument, tile and warps make the kernels): the fit takes the bank's fastest anyway,
        # and each other shape would cost a GPU session ~10 s of compiles
        mine = launches if bsz > 1 else [l for l in launches if (l.tile, l.warps) == (launches[0].tile, launches[0].warps)]
        forms = [(f"tail {l.tile}/{l.chunk}/{l.warps}", lambda *a, l=l: tail.tail(*a, launch=l), l.chunk)
                 for l in mine]
        forms += [("torch.compile", lambda *a, compiled=compiled: compiled(*a).float(), None)]
        for name, fn, chunk in forms:
            with _Precision(precision):
                try:
                    s = best_seconds(lambda fn=fn, ts=ts: step(fn, ts), dev, reps)
                except Exception as e:  # noqa: BLE001 - one form, not the part
                    rows.append({"bank": bsz, "precision": precision, "form": name, "failed": str(e)[:300]})
                    continue
            row = {"bank": bsz, "precision": precision, "form": name, "ms_per_image": s * 1000 / bsz}
            if chunk:
                moved = tail_bytes(bsz, k, h, w, c, 2 if precision == "bf16" else 4, chunk)
                row["mb_per_image"] = moved / bsz / 1e6
                row["x_copy"] = s / (moved / (copy_gbs * 1e9))
            rows.append(row)
            if on_row:
                on_row(rows)
        _sync(dev)
        del ts, xs
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    return rows


def best_launch(rows, bank: int = 24):
    """The launch whose bank row was fastest, or None."""
    ok = [r for r in rows if r["bank"] == bank and r["form"].startswith("tail ") and "ms_per_image" in r]
    if not ok:
        return None
    tile, chunk, warps = (int(x) for x in min(ok, key=lambda r: r["ms_per_image"])["form"][5:].split("/"))
    return tail.Launch(tile, chunk, warps)


def table(result) -> str:
    lines = ["| tail form | bank | precision | ms per image (fwd+bwd) | MB per image | x copy floor |",
             "|---|---|---|---|---|---|"]
    for r in result.get("times", []):
        if "failed" in r:
            lines.append(f"| {r['form']} | {r['bank']} | {r['precision']} | failed | | |")
            continue
        mb = f"{r['mb_per_image']:.1f}" if "mb_per_image" in r else "–"
        xc = f"{r['x_copy']:.1f}x" if "x_copy" in r else "–"
        lines.append(f"| {r['form']} | {r['bank']} | {r['precision']} | {r['ms_per_image']:.3f} | {mb} | {xc} |")
    for r in result.get("check", []):
        worst = max(r["errors"], key=r["errors"].get)
        lines.append(f"check {r['precision']}: worst relative error {r['errors'][worst]:.1e} ({worst}; torch's own "
                     f"{r['torch_errors'][worst]:.1e}), bound {r['bound']:.0e} or 3x torch's: {'ok' if r['ok'] else 'FAILED'}")
    return "\n".join(lines)
