"""The "triton" preset's tail kernels (ddcodec/tail.py), run by Triton's interpreter on the CPU
and compiled for an H100/H200 (sm_90) with the ptxas that Triton carries: the same kernels a
GPU runs, checked against torch's own forward and autograd in float64."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined: before the import

import pytest

triton = pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import example, given, settings, strategies as st  # noqa: E402

from ddcodec import tail  # noqa: E402
from ddcodec.fit import compiled, fell_back, mse_per_image, optimise, tail_supported  # noqa: E402
from ddcodec.nets import Architecture, build, channel_norm, seeded_input, upsample2x  # noqa: E402

SMALL = tail.Launch(tile=16, chunk=32, warps=4)  # several chunks and a ragged last tile at test sizes
NAMES = ("y", "g_a", "b_a", "w_b", "c_b", "g_b", "b_b", "w_o", "c_o")


def reference(y, g_a, b_a, w_b, c_b, g_b, b_b, w_o, c_o):
    """The tail as decoder_program computes it, op by op."""
    bsz, k = y.shape[:2]
    x = F.relu(upsample2x(y))
    shape = x.shape
    x = channel_norm(x.reshape(1, -1, *shape[2:]), g_a.reshape(-1), b_a.reshape(-1)).view(shape)
    x = torch.bmm(w_b, x.reshape(bsz, k, -1)).view(shape) + c_b[:, :, None, None]
    x = channel_norm(F.relu(x).reshape(1, -1, *shape[2:]), g_b.reshape(-1), b_b.reshape(-1)).view(shape)
    out = torch.bmm(w_o, x.reshape(bsz, k, -1)).view(bsz, -1, *shape[2:]) + c_o[:, :, None, None]
    return torch.sigmoid(out)


def draw(bsz, k, h, w, c, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return [r(bsz, k, h, w), 1 + 0.3 * r(bsz, k), 0.2 * r(bsz, k), r(bsz, k, k) / k ** 0.5, 0.1 * r(bsz, k),
            1 + 0.3 * r(bsz, k), 0.2 * r(bsz, k), r(bsz, c, k) / k ** 0.5, 0.1 * r(bsz, c)]


def relative(a, b) -> float:
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


@settings(max_examples=8)
@example(bsz=1, k=1, h=1, w=1, c=3, seed=352505)  # c_b zero in theory: see the bound
@given(bsz=st.integers(1, 2), k=st.integers(1, 24), h=st.integers(1, 5), w=st.integers(1, 5),
       c=st.sampled_from([1, 3]), seed=st.integers(0, 2**31 - 1))
def test_the_tail_and_its_gradients_match_torch(bsz, k, h, w, c, seed):
    # one half-size pixel upsamples to four equal ones: a variance of 0, where only rounding
    # is left of the gradients, in torch's form too
    if h * w == 1:
        h = 2
    xs = draw(bsz, k, h, w, c, seed)
    ours = [t.float().requires_grad_() for t in xs]
    theirs = [t.float().requires_grad_() for t in xs]  # torch's own fp32: how far rounding alone goes
    ref = [t.clone().requires_grad_() for t in xs]
    out = tail.tail(*ours, launch=SMALL)
    expect = reference(*ref)
    assert out.shape == expect.shape == (bsz, c, 2 * h, 2 * w) and out.dtype == torch.float32
    assert relative(out.detach(), expect.detach()) < 1e-5
    gx = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(gx.float())
    reference(*theirs).backward(gx.float())
    expect.backward(gx)
    scale = max(float(b.grad.norm()) for b in ref)
    for name, a, t, b in zip(NAMES, ours, theirs, ref):
        assert a.grad is not None and a.grad.dtype == torch.float32, name
        # a gradient that nearly cancels (one channel, two pixels) leaves fp32 a larger share
        # of rounding: the bound follows torch's own fp32 error on the same inputs. One that is
        # zero in exact arithmetic (c_b at k=1 when the channel stays positive through the
        # ReLU: the normalisation removes a constant) is rounding alone, sized by the largest
        # gradient rather than its own, and torch's may land small by luck (a 10x run found
        # c_b 3.6e-4 off against torch's 2.5e-5): so 1e-5 of the largest gradient is allowed too.
        err = float((a.grad.double() - b.grad).norm())
        bound = max(1e-4, 10 * relative(t.grad, b.grad)) * float(b.grad.norm()) + 1e-5 * scale
        assert err < bound, (name, err, bound)


def test_bf16_products_cost_the_tail_no_more_than_they_cost_torch():
    """The bf16 path (operands rounded to bf16, fp32 sums; emulated exactly under the
    interpreter) against float64, beside torch's own bf16 autocast on the same inputs."""
    xs = draw(2, 16, 6, 8, 3, 4)
    ref = [t.clone().requires_grad_() for t in xs]
    expect = reference(*ref)
    gx = torch.randn(expect.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expect.backward(gx)
    errors = {}
    for form in ("tail", "torch"):
        ts = [t.float() for t in xs]
        ts[0] = ts[0].bfloat16()
        ts = [t.requires_grad_() for t in ts]
        with torch.autocast("cpu", torch.bfloat16, enabled=form == "torch"):
            out = tail.tail(*ts, launch=SMALL) if form == "tail" else reference(*ts)
        out.float().backward(gx.float())
        assert ts[0].grad.dtype == torch.bfloat16
        errors[form] = [relative(out.detach(), expect.detach())] + [relative(a.grad, b.grad) for a, b in zip(ts, ref)]
    for name, ours, theirs in zip(("out",) + NAMES, errors["tail"], errors["torch"]):
        assert ours < max(0.03, 3 * theirs), (name, ours, theirs)
    assert errors["tail"][0] < 0.01  # the image itself: a few bf16 roundings deep


def test_the_tail_does_not_depend_on_its_tiling():
    xs = [t.float() for t in draw(2, 16, 6, 7, 3, 1)]
    got = []
    for launch in (SMALL, tail.Launch(tile=32, chunk=64, warps=4), tail.LAUNCH):
        ts = [t.clone().requires_grad_() for t in xs]
        out = tail.tail(*ts, launch=launch)
        out.square().sum().backward()
        got.append([out.detach()] + [t.grad for t in ts])
    for other in got[1:]:  # only the sums' order differs: fp32 rounding, nothing more
        for name, a, b in zip(("out",) + NAMES, got[0], other):
            assert relative(b, a.double()) < 1e-5, name


@pytest.mark.parametrize("preset", ["triton", "triton-graphs"])
def test_a_fit_through_the_triton_preset_follows_the_eager_fit(preset):
    arch = Architecture(channels=16, layers=3)
    z = seeded_input(arch, 16, 24, 0)[None]
    target = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    fits = []
    for form in (False, preset):  # lr 0.05: each of the few steps moves the loss
        model = build(arch, (0,))
        best = optimise(model, z, lambda o: mse_per_image(o, target), 4, 0.05, compile=form)
        fits.append((model, float(best)))
    (eager, loss_eager), (ours, loss_ours) = fits
    assert not fell_back(ours)
    assert getattr(ours, "_ddc_compiled").key[0] == preset
    for (name, a), (_, b) in zip(eager.named_tensors(), ours.named_tensors()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    assert abs(loss_ours - loss_eager) < 1e-5 * loss_eager
    start = float(mse_per_image(build(arch, (0,))(z).detach(), target))
    assert loss_ours < start  # the steps moved the fit: a frozen one would pass the checks above


@pytest.mark.filterwarnings("error:torch.compile failed")
def test_the_triton_preset_falls_back_where_the_tail_does_not_apply():
    assert tail_supported(Architecture(channels=64, layers=6))
    assert not tail_supported(Architecture(channels=64, layers=1))  # no upsampling
    assert not tail_supported(Architecture(channels=128, layers=6))  # spills on sm_90: the default compile
    assert not tail_supported(Architecture(kind="skip", channels=16, layers=3))
    arch = Architecture(channels=4, layers=1)
    model = build(arch, (0,))
    z = seeded_input(arch, 8, 8, 0)[None]
    out = compiled(model, "triton")(z, [t for _, t in model.named_tensors()])
    torch.testing.assert_close(out, model(z), rtol=1e-5, atol=1e-6)
    assert not fell_back(model)  # the default compile ran: a failed triton compile falls back to eager


def test_every_pass_compiles_for_sm90_without_spilling():
    """The kernels a GPU would run, at k=64, in TF32 and bf16: Triton compiles them for an
    H100/H200 here, no GPU needed, and ptxas reports each one's registers and spills."""
    report = tail.sm90_report()
    assert len(report) == 14  # six passes in two precisions, the adjoint and the statistics' merge
    for row in report:
        assert row["spill_bytes"] == 0, row
        assert row["registers"] <= 255, row
        assert row["tensor_cores"] == (row["pass"] not in (0, "adjoint", "stats")), row


def test_without_a_gpu_the_compiled_kernels_fall_back_with_the_reason(monkeypatch):
    """Outside the interpreter a CPU cannot run the kernels: the fit warns why and goes on
    with eager kernels, the same function."""
    monkeypatch.setattr(tail, "INTERPRETED", False)
    arch = Architecture(channels=4, layers=2)
    model = build(arch, (0,))
    z = seeded_input(arch, 8, 8, 0)[None]
    with pytest.warns(UserWarning, match="need a CUDA GPU"):
        out = compiled(model, "triton")(z, [t for _, t in model.named_tensors()])
    assert fell_back(model)
    torch.testing.assert_close(out, model(z))


@pytest.mark.parametrize("preset", ["triton", "triton-graphs"])
def test_the_stored_folded_net_runs_through_the_tail_too(preset):
    """The fine-tuning trains the folded net (biases, no scales or shifts) through the same
    preset: its output and gradients match its eager forward."""
    arch = Architecture(channels=16, layers=3)
    trained = build(arch, (0,))
    with torch.no_grad():
        for t in list(trained.scale) + list(trained.shift):
            t.add_(0.1 * torch.randn(t.shape, generator=torch.Generator().manual_seed(3)))
    folded = trained.fold()
    z = seeded_input(arch, 16, 24, 0)[None]
    params = [t for _, t in folded.named_tensors()]
    ours = compiled(folded, preset)(z, params)
    assert not fell_back(folded)
    ours.square().sum().backward()
    grads = [t.grad.clone() for t in params]
    folded.zero_grad()
    expect = folded(z)
    expect.square().sum().backward()
    assert relative(ours.detach(), expect.detach().double()) < 1e-5
    for (name, t), g in zip(folded.named_tensors(), grads):
        assert relative(g, t.grad.double()) < 1e-4, name


def test_the_kernels_are_custom_ops_that_torch_can_trace():
    """Each op's fake form (the shapes torch.compile traces with) agrees with what it returns,
    and its schema and the forward op's autograd pass torch's own checks (torch.library.opcheck)."""
    ts = [t.float() for t in draw(2, 5, 3, 4, 3, 6)]
    launch = (SMALL.tile, SMALL.chunk, SMALL.warps)
    leaves = [t.clone().requires_grad_() for t in ts]
    torch.library.opcheck(tail._forward, (*leaves, *launch))
    x, ma, ra, mb, rb = tail._forward(*ts, *launch)
    state = [ts[0], ts[1], ts[2], ma, ra, ts[3], ts[4], ts[5], ts[6], mb, rb, ts[7], ts[8], torch.randn(x.shape)]
    sums = [torch.randn(2, 5) for _ in range(4)]
    torch.library.opcheck(tail._output_sums, (*state, *launch))
    torch.library.opcheck(tail._middle_sums, (*state, *sums[:2], *launch))
    torch.library.opcheck(tail._input_grad, (*state, *sums, *launch))


def test_head_and_tail_compile_as_one_graph():
    """The whole triton program traces without a break (fullgraph), so inductor sees the small
    ops between the kernels (and a CUDA-graph capture, untested here, could cover the whole
    step); its output and gradients are the eager program's."""
    from ddcodec.compiling import _triton_program
    arch = Architecture(channels=8, layers=3)
    model = build(arch, (0,))
    z = seeded_input(arch, 16, 24, 0)[None]
    got = []
    for fn in (_triton_program, torch.compile(_triton_program, fullgraph=True, dynamic=False)):
        model.zero_grad()
        out = fn(z, *model.terms())
        out.square().sum().backward()
        got.append([out.detach()] + [t.grad.clone() for _, t in model.named_tensors()])
    for a, b in zip(*got):
        assert relative(b, a.double()) < 1e-5
    assert all(float(g.abs().sum()) > 0 for g in got[0][1:])  # every weight reached


def test_a_tail_check_that_raises_ends_the_part_with_the_error_instead_of_the_run(monkeypatch):
    from benchmarks import speed, tail_kernels

    def broken(dev, **sizes):
        raise RuntimeError("PassManager::run failed\nsecond line")

    monkeypatch.setattr(tail_kernels, "check", broken)
    saved = []
    part = speed.tail_part(torch.device("cpu"), {"copy_gbs": 1.0}, saved.append)
    assert part["failed"].startswith("RuntimeError: PassManager::run failed")
    assert "times" not in part and saved == []  # no kernel was timed after it
    assert speed._tail_table(part).startswith("tail kernels: failed (RuntimeError")
