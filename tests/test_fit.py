import functools

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from ddcodec.codec import encode, fit_bank, quantize_bank
from ddcodec.errors import ConfigError
from ddcodec import compiling, fit as fit_module
from ddcodec.fit import COMPILE_PRESETS, FUSED_OPTIONS, GRAPH_MODES, compiled, fell_back
from ddcodec.fit import ADAM_BETAS, BETA1_COMPRESSION, BETA2_COMPRESSION, COMPILE_WORK, COMPILE_WORK_GPU, ROLLBACK_EVERY, STOP_EVERY, FitConfig, default_lr, mse_per_image, optimise
from ddcodec.nets import Architecture, build, decoder_program, seeded_input
from ddcodec.quant import QuantConfig


@given(st.integers(1, 1023))
def test_default_learning_rate_falls_with_width_from_005_to_001(k):
    lr = default_lr(k)
    assert 0.01 <= lr <= 0.05
    assert default_lr(k + 1) <= lr
    assert FitConfig().lr_for(k) == lr and FitConfig(lr=0.003).lr_for(k) == 0.003


def test_default_learning_rate_ends_are_the_measured_ones():
    assert default_lr(8) == default_lr(21) == 0.05  # kodak-mini rate points (NOTES.md)
    assert default_lr(64) == 0.01  # the reference's rate, better at k = 64


def _noisy(h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_early_stop_ends_the_fit_once_the_loss_reaches_stop_mse():
    img = _noisy()
    # any output of a sigmoid net is within MSE 0.99 of any image in [0, 1]: stop at the first test
    bank = fit_bank([img], 4, 3, FitConfig(iters=200, stop_mse=0.99), device="cpu")
    assert bank.iters == STOP_EVERY
    # white noise cannot be fitted to MSE 1e-9 in 30 steps: the whole budget runs
    bank = fit_bank([img], 4, 3, FitConfig(iters=30, stop_mse=1e-9), device="cpu")
    assert bank.iters == 30


def test_stop_mse_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError):
        FitConfig(stop_mse=1.5)


def _bank_fit(rollback_db, blow_up_at=None, iters=2 * ROLLBACK_EVERY):
    """Two members fitted to two images; at step blow_up_at member 0's weights are thrown far
    off (what a blow-up at a high learning rate does). Returns (best losses, final weights)."""
    yy, xx = np.mgrid[0:16, 0:24] / 24.0
    imgs = [np.stack([np.sin(f * xx + g * yy) for g in (1, 2, 3)], -1) * 0.4 + 0.5 for f in (2, 5)]
    imgs = [np.round(im * 255).astype(np.uint8) for im in imgs]  # smooth: a fit keeps improving
    arch = Architecture(channels=4, layers=3)
    model = build(arch, [0, 1])
    z = torch.stack([seeded_input(arch, 16, 24, s) for s in (0, 1)])
    target = torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in imgs])).float() / 255
    step = [0]

    def transform(params):
        step[0] += 1
        if step[0] == blow_up_at:
            with torch.no_grad():
                for p in params:
                    p[0].mul_(-40.0)
        return params

    best = optimise(model, z, lambda o: mse_per_image(o, target), iters, 0.05,
                    transform=transform, rollback_db=rollback_db)
    return best, [t.detach().clone() for _, t in model.named_tensors()]


def test_rollback_returns_a_blown_up_member_to_its_best_and_fits_on_from_there():
    # blown up 10 steps before the check at ROLLBACK_EVERY: the member with rollback goes on
    # improving from its best; without it, the best stays the one from before the blow-up
    with_rb, w_rb = _bank_fit(3.0, blow_up_at=ROLLBACK_EVERY - 10)
    without, w_no = _bank_fit(0.0, blow_up_at=ROLLBACK_EVERY - 10)
    assert with_rb[0] < without[0] * 0.99
    # the other member's fit is untouched by its neighbour's rollback
    assert with_rb[1] == without[1]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(w_rb, w_no))


def test_rollback_never_fires_in_an_ordinary_fit():
    with_rb, w_rb = _bank_fit(3.0)
    without, w_no = _bank_fit(0.0)
    assert torch.equal(with_rb, without)
    assert all(torch.equal(a, b) for a, b in zip(w_rb, w_no))


def test_rollback_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError):
        FitConfig(rollback_db=-1.0)


def test_compression_fits_use_their_own_betas_and_restoration_keeps_adams():
    assert FitConfig().betas_for(compression=True) == (BETA1_COMPRESSION, BETA2_COMPRESSION) == (0.8, 0.99)
    assert FitConfig().betas_for(compression=False) == ADAM_BETAS == (0.9, 0.999)
    assert FitConfig(beta1=0.5).betas_for(True) == (0.5, 0.99)
    assert FitConfig(beta2=0.9).betas_for(False) == (0.9, 0.9)


@pytest.mark.parametrize("field", ["beta1", "beta2"])
def test_an_encode_fits_and_fine_tunes_at_the_compression_betas(field):
    img = _noisy(16, 24)
    q = QuantConfig(qat_iters=20)
    fit = dict(iters=30, seed=3)
    default = encode(img, 4, 3, FitConfig(**fit), q, device="cpu").data
    same = dict(beta1=BETA1_COMPRESSION, beta2=BETA2_COMPRESSION)
    assert encode(img, 4, 3, FitConfig(**same, **fit), q, device="cpu").data == default
    adams = {field: ADAM_BETAS[0 if field == "beta1" else 1]}
    assert encode(img, 4, 3, FitConfig(**adams, **fit), q, device="cpu").data != default
    # the fine-tuning keeps the fit's betas
    bank = fit_bank([img], 4, 3, FitConfig(**adams, **fit), device="cpu")
    assert bank.betas == FitConfig(**adams).betas_for(True) != FitConfig().betas_for(True)


def _adam_steps(opt_of, steps=5):
    torch.manual_seed(0)
    params = [torch.randn(2, 5, 5, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
    opt = opt_of(params)
    for i in range(steps):
        opt.zero_grad()
        sum(((p - i) ** 2).sum() for p in params).backward()
        opt.step()
    return opt, [p.detach() for p in params]


def test_the_fit_steps_adam_in_its_fused_form_with_adams_update():
    opt, fused = _adam_steps(lambda ps: fit_module.adam(ps, 0.01, (0.8, 0.99)))
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):  # CPU fused Adam since 2.4
        assert opt.defaults["fused"]
    _, plain = _adam_steps(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99)))
    for a, b in zip(fused, plain):  # the same update, rounded its own way
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _adam_error(opt_of, steps=30, n=20_000):
    """rms distance of a float32 Adam run from the same run in float64, the plain form's (noisy
    gradients, a learning rate changed every step, as the fit's cosine does)."""
    start = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.1
    ends = []
    for dtype, make in ((torch.float64, lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.8, 0.99))),
                        (torch.float32, opt_of)):
        p = start.to(dtype).requires_grad_()
        opt, gen = make([p]), torch.Generator().manual_seed(1)
        for i in range(steps):
            p.grad = (0.01 * torch.randn(n, generator=gen) + 0.001 * p.detach().double()).to(dtype)
            opt.param_groups[0]["lr"] = 0.05 * (1 - i / steps)
            opt.step()
        ends.append(p.detach().double())
    return float((ends[1] - ends[0]).pow(2).mean().sqrt())


def test_the_fits_fused_adam_rounds_no_worse_than_the_plain_form():
    # fused and plain fits of one image differ by tenths of a dB, by rounding alone: over 88
    # paired kodak fits the mean difference was -0.01 dB (benchmarks.adam_quality). This pins
    # the arithmetic: the fused update is no further from the exact one than the plain form's.
    fused = _adam_error(lambda ps: fit_module.adam(ps, 0.05, (0.8, 0.99)))
    plain = _adam_error(lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.8, 0.99)))
    assert 0 < fused <= 1.1 * plain


def test_a_torch_without_fused_adam_for_the_device_gets_the_plain_form(monkeypatch):
    real = torch.optim.Adam

    def no_fused(params, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)
    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt, _ = _adam_steps(lambda ps: fit_module.adam(ps, 0.01, (0.8, 0.99)))
    assert not opt.defaults["fused"]


def test_restoration_fits_at_adams_own_betas():
    from ddcodec.restore import _config
    for task in ("denoise", "inpaint", "superres"):
        assert _config(task, "deep-decoder", None, None, None, 0, None)[2].betas_for(True) == ADAM_BETAS


def test_compression_fits_start_with_a_live_first_block_and_restoration_does_not():
    from ddcodec.restore import _config
    assert FitConfig().live_first_block_for(True, 21, 24) and not FitConfig().live_first_block_for(False, 21, 24)
    assert not FitConfig(live_first_block=False).live_first_block_for(True, 21, 24)
    for task in ("denoise", "inpaint", "superres"):
        fit = _config(task, "deep-decoder", None, None, None, 0, None)[2]
        assert not fit.live_first_block_for(True, 21, 24)
    img = _noisy(16, 24)
    fit = dict(iters=30, seed=3)
    default = encode(img, 4, 3, FitConfig(**fit), QuantConfig(qat_iters=20), device="cpu").data
    assert encode(img, 4, 3, FitConfig(live_first_block=True, **fit), QuantConfig(qat_iters=20),
                  device="cpu").data == default
    assert encode(img, 4, 3, FitConfig(live_first_block=False, **fit), QuantConfig(qat_iters=20),
                  device="cpu").data != default


def test_the_live_start_is_off_by_default_when_block_0_has_more_channels_than_input_pixels():
    assert FitConfig().live_first_block_for(True, 24, 24)
    assert not FitConfig().live_first_block_for(True, 64, 24)  # k=64 at 192x128: a 6x4 input
    assert FitConfig().live_first_block_for(True, 64, 384)  # k=64 at 768x512: a 24x16 input
    assert FitConfig(live_first_block=True).live_first_block_for(True, 64, 24)  # asked for
    img = _noisy(16, 24)  # d=3: a 4x6 input, 24 pixels (5x7 with a margin)
    fit, q = dict(iters=30, seed=3, margin=False), QuantConfig(qat_iters=20)
    wide = encode(img, 32, 3, FitConfig(**fit), q, device="cpu").data
    assert encode(img, 32, 3, FitConfig(live_first_block=False, **fit), q, device="cpu").data == wide
    assert encode(img, 32, 3, FitConfig(live_first_block=True, **fit), q, device="cpu").data != wide


@pytest.mark.parametrize("field", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_betas_out_of_range_are_config_errors(field, value):
    with pytest.raises(ConfigError):
        FitConfig(**{field: value})


def test_auto_compiles_only_large_cpu_compression_fits():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = FitConfig()
    assert auto.compile == "auto"
    assert auto.compile_for(cpu, True, COMPILE_WORK)
    assert not auto.compile_for(cpu, True, COMPILE_WORK - 1)  # the compile would not pay
    assert not auto.compile_for(cpu, False, 1e12)  # restoration keeps the kernels it was tuned with
    assert auto.compile_for(cuda, True, COMPILE_WORK_GPU)
    assert not auto.compile_for(cuda, True, COMPILE_WORK_GPU - 1)
    # one full-size Kodak image at the default k and iterations compiles (measured on an H200)
    assert auto.compile_for(cuda, True, 768 * 512 * 64 * auto.iters)
    assert not auto.compile_for(cuda, False, 1e15)
    assert FitConfig(compile=True).compile_for(cpu, False, 1)
    assert not FitConfig(compile=False).compile_for(cpu, True, 1e12)


def test_compile_setting_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError):
        FitConfig(compile="yes")


def test_a_fit_whose_compile_fails_warns_and_fits_eagerly(monkeypatch):
    arch = Architecture(channels=4, layers=2)
    z = seeded_input(arch, 8, 8, 0)[None]
    target = torch.rand(1, 3, 8, 8)
    loss = lambda out: mse_per_image(out, target)  # noqa: E731

    def broken_compile(fn, **kw):
        def fail(*a):
            raise RuntimeError("no C++ compiler")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("ddcodec.compiling._PROGRAMS", {})  # not a program compiled by an earlier test
    eager = build(arch)
    optimise(eager, z, loss, 20, 0.01)
    model = build(arch)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        optimise(model, z, loss, 20, 0.01, compile=True)
    for a, b in zip(eager.parameters(), model.parameters()):
        assert torch.equal(a, b)  # the eager fallback ran the very same fit


def test_a_compile_mode_reaches_torch_compile_and_gets_its_own_compiled_forward(monkeypatch):
    arch = Architecture(channels=4, layers=2)
    z = seeded_input(arch, 8, 8, 0)[None]
    target = torch.rand(1, 3, 8, 8)
    modes = []

    def recording_compile(fn, **kw):
        modes.append(kw.get("mode"))
        return fn
    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(compiling, "_PROGRAMS", {})  # no compiled program from another test
    model = build(arch)
    for compile_ in (True, True, "reduce-overhead", "reduce-overhead"):
        optimise(model, z, lambda out: mse_per_image(out, target), 2, 0.01, compile=compile_)
    assert modes == [None, "reduce-overhead"]  # a compilation per change of mode, kept while it holds


@pytest.mark.parametrize("preset,device,kind,expect", [
    ("fused", "cuda", "deep-decoder", dict(fused=True, options=FUSED_OPTIONS)),
    ("fused", "cpu", "deep-decoder", dict(fused=True, options=None)),  # the CPU keeps inductor's limits
    ("fused-graphs", "cuda", "deep-decoder", dict(fused=True, options={**FUSED_OPTIONS, "triton.cudagraphs": True})),
    ("fused-graphs", "cpu", "deep-decoder", dict(fused=True, options=None)),  # no CUDA graphs off a GPU
    ("fused", "cuda", "skip", dict(fused=False, options=None)),  # limits chosen on the Deep Decoder only
    ("reduce-overhead", "cuda", "deep-decoder", dict(fused=False, options=None, mode="reduce-overhead")),
    (True, "cuda", "deep-decoder", dict(fused=False, options=None)),
    ("default", "cpu", "deep-decoder", dict(fused=False, options=None)),
])
def test_a_compile_preset_reaches_torch_compile_with_its_settings(monkeypatch, preset, device, kind, expect):
    arch = Architecture(kind, channels=4, layers=2)
    seen = []

    def recording_compile(fn, **kw):
        seen.append((fn, kw))
        return fn
    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(compiling, "_PROGRAMS", {})
    model = build(arch)
    ran = compiled(model, preset, torch.device(device))
    handed, kw = seen[0]
    assert kw.get("options") == expect["options"] and kw.get("mode") == expect.get("mode")
    # the function handed to torch.compile: the Deep Decoder's shared program (its own forward
    # under CUDA graphs, where Parameters are static inputs) or the skip net's forward, with
    # fused=True or plain; a failed compile falls back to the plain forward either way (the
    # fused sum is for inductor)
    graphs = preset in GRAPH_MODES and device == "cuda"
    plain = decoder_program if kind == "deep-decoder" and not graphs else model.forward
    fused = isinstance(handed, functools.partial) and handed.keywords == {"fused": True}
    assert fused == expect["fused"] and (handed.func if fused else handed) == plain
    assert ran.eager == model.forward


def test_config_takes_the_compile_presets_and_hands_them_to_the_fit():
    cpu = torch.device("cpu")
    for preset in COMPILE_PRESETS:
        assert FitConfig(compile=preset).compile_for(cpu, True, 1) == preset
    with pytest.raises(ConfigError, match="fused"):
        FitConfig(compile="fast")


@pytest.mark.filterwarnings("error:torch.compile failed")
def test_a_fused_compiled_fit_lands_where_the_eager_fit_does():
    arch = Architecture(channels=8, layers=4)
    z = seeded_input(arch, 32, 48, 0)[None]
    target = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    losses = {}
    for preset in (False, "fused"):
        model = build(arch)
        losses[preset] = float(optimise(model, z, lambda out: mse_per_image(out, target), 60, 0.01, compile=preset)[0])
        assert preset is False or not fell_back(model)
    assert abs(10 * np.log10(losses[False] / losses["fused"])) < 0.05  # dB


def test_the_fit_ends_on_each_members_best_iterate():
    # lr 0.2 makes the loss jump about, so the best iterate is seldom the last one
    arch = Architecture(channels=6, layers=3)
    z = torch.stack([seeded_input(arch, 16, 16, s) for s in (0, 1)])
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    loss = lambda out: mse_per_image(out, target)  # noqa: E731
    seen = []
    model = build(arch, (0, 1))
    best = optimise(model, z, loss, 40, 0.2, observe=lambda out: seen.append(loss(out)))
    lowest = torch.stack(seen).min(0).values
    with torch.no_grad():
        final = loss(model(z))
    assert torch.all(best <= lowest) and torch.allclose(final, best)
    assert not torch.allclose(seen[-1], best)  # the test is not trivial: the last step was not the best


def test_an_encode_compiles_by_the_work_rule(monkeypatch, image):
    import ddcodec.fit as fit_module
    seen = []
    real = fit_module.compiled
    monkeypatch.setattr(fit_module, "compiled", lambda m, *a: seen.append(m) or real(m, *a))
    work = image.shape[0] * image.shape[1] * 4 * 10
    monkeypatch.setattr(fit_module, "COMPILE_WORK", work + 1)
    encode(image, channels=4, layers=3, fit=FitConfig(iters=10), quant=QuantConfig(qat_iters=0), device="cpu")
    assert not seen
    monkeypatch.setattr(fit_module, "COMPILE_WORK", work)
    encode(image, channels=4, layers=3, fit=FitConfig(iters=10), quant=QuantConfig(qat_iters=0), device="cpu")
    # the fit, then the fine-tuning of the folded net, which follows a compiled fit
    assert [m.arch.folded for m in seen] == [False, True]


@pytest.mark.filterwarnings("error:torch.compile failed")
def test_the_fit_and_its_fine_tuning_share_one_compilation(image):
    # the trained and the folded Deep Decoder run one program (nets.decoder_program) on
    # tensors of the same shapes and kind, so the fine-tuning finds the fit's graph compiled
    from torch._dynamo.utils import counters
    before = counters["stats"]["unique_graphs"]
    # a shape no other test compiles (k=7, 5 blocks), so that the fit's compilation is new
    bank = fit_bank([image], 7, 5, FitConfig(iters=3, compile=True), device="cpu")
    quantize_bank(bank, QuantConfig(qat_iters=3))
    assert bank.model.arch.folded and bank.model._ddc_compiled.tried and not fell_back(bank.model)
    assert counters["stats"]["unique_graphs"] - before == 1


def test_one_models_failed_compile_leaves_the_next_compiled(monkeypatch):
    # the program is shared, the fallback is not: a stand-in program that fails for 5 channels
    def program(z, *args, **kw):
        if z.shape[1] == 5:
            raise RuntimeError("inductor failed")
        return decoder_program(z, *args, **kw)
    monkeypatch.setitem(compiling._PROGRAMS, (True, "cpu"), program)
    losses = lambda out: out.flatten(1).mean(1)  # noqa: E731
    first, second = build(Architecture(channels=5, layers=3)), build(Architecture(channels=4, layers=3))
    with pytest.warns(UserWarning, match="torch.compile failed"):
        optimise(first, seeded_input(first.arch, 16, 16, 0)[None], losses, 2, 0.01, compile=True)
    optimise(second, seeded_input(second.arch, 16, 16, 0)[None], losses, 2, 0.01, compile=True)
    assert fell_back(first) and not fell_back(second)


def test_the_neutral_terms_keep_no_gradient_after_a_fit():
    # the zero biases of the trained net: a gradient kept there would grow with every step
    arch = Architecture(channels=4, layers=3)
    z = seeded_input(arch, 16, 16, 0)[None]
    model = build(arch)
    optimise(model, z, lambda out: out.flatten(1).mean(1), 3, 0.01, compile=True)
    neutral = [t for ts in model._ddc_neutral.values() for t in ts]
    assert neutral and all(t.grad is None and t.requires_grad for t in neutral)


def test_fine_tuning_runs_at_the_fits_precision(monkeypatch, image):
    import ddcodec.codec as codec_module
    seen = []
    real = codec_module.optimise

    def recording(*a, **kw):
        seen.append((kw.get("transform") is not None, kw.get("mode")))
        return real(*a, **kw)
    monkeypatch.setattr(codec_module, "optimise", recording)
    encode(image, channels=4, layers=3, fit=FitConfig(iters=10, precision="tf32"), quant=QuantConfig(qat_iters=3), device="cpu")
    assert (True, "tf32") in seen  # the straight-through fine-tuning, not fp32 after a tf32 fit
    assert {mode for _, mode in seen} == {"tf32"}


def test_a_fit_whose_compile_failed_leaves_the_fine_tuning_eager(monkeypatch, image):
    def broken_compile(fn, **kw):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")
        return fail
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("ddcodec.compiling._PROGRAMS", {})
    with pytest.warns(UserWarning, match="torch.compile failed"):
        bank = fit_bank([image], 4, 3, FitConfig(iters=2, compile=True), device="cpu")
    assert fell_back(bank.model) and bank.compiled is False  # no second attempt, no second warning


def test_a_steps_backward_runs_inside_the_matmul_precision_and_outside_autocast(monkeypatch):
    # On a GPU, "tf32" must reach the backward's products too (cuBLAS and the tail kernels
    # read the flag as each runs), while bf16 autocast stays around the forward alone. The
    # CPU runs neither, so both scopes are replaced by recorders here.
    import contextlib

    where = {"precision": False, "autocast": False}
    seen = []

    def scope(name):
        @contextlib.contextmanager
        def recorder(mode, device):
            assert mode == "tf32"
            where[name] = True
            try:
                yield
            finally:
                where[name] = False
        return recorder

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(("forward", dict(where)))
            return x

        @staticmethod
        def backward(ctx, g):
            seen.append(("backward", dict(where)))
            return g

    monkeypatch.setattr(fit_module, "precision", scope("precision"))
    monkeypatch.setattr(fit_module, "autocast", scope("autocast"))
    arch = Architecture("deep-decoder", 4, 2, 3)
    z = seeded_input(arch, 8, 8, 0)[None]
    optimise(build(arch), z, lambda out: Spy.apply(out).flatten(1).mean(1), 2, 0.01, mode="tf32")
    # two steps' forward and backward; the final scoring of the best iterate comes after
    assert seen[:4] == [("forward", {"precision": True, "autocast": True}),
                     ("backward", {"precision": True, "autocast": False})] * 2


def _backward_raising(error, from_call: int = 1, saved=None):
    """An identity whose backward raises error from its from_call-th run on (the ones before
    pass the gradient through), and a stand-in for compiling.compiled that puts it on the first
    tensor's path: the "compiled" program of a model, whose eager fallback is the plain forward.
    saved: a list that gets a weak reference to a tensor each forward keeps for its backward,
    as a compiled graph keeps its activations."""
    import weakref

    from ddcodec.fit import _EagerOnFailure

    calls = []

    class Raising(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            if saved is not None:
                ctx.kept = torch.zeros(1000)
                saved.append(weakref.ref(ctx.kept))
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            if len(calls) >= from_call:
                raise type(error)(*error.args)  # a new one: a raised error keeps its frames, and so the graph
            return g

    def compiled(model, preset=True, device=None):
        # on the first block's weights, which the backward reaches last: by then the later
        # tensors' gradients have landed
        fn = _EagerOnFailure(lambda z, p: model.forward(z, [Raising.apply(p[0])] + list(p[1:])), model.forward)
        model._ddc_compiled = fn
        return fn
    return compiled


def test_a_compiled_backward_that_fails_at_its_first_run_falls_back_to_eager_kernels(monkeypatch):
    # autograd compiles a graph's backward at its first call, where the tail kernels' largest
    # passes also run first: such a failure must end like a failed forward compile, not the fit
    arch = Architecture("deep-decoder", 4, 2, 3)
    z = seeded_input(arch, 8, 8, 0)[None]
    target = torch.rand(1, 3, 8, 8)
    loss = lambda out: mse_per_image(out, target)  # noqa: E731
    eager = build(arch)
    optimise(eager, z, loss, 5, 0.01)
    monkeypatch.setattr(fit_module, "compiled", _backward_raising(RuntimeError("out of resource: shared memory, Required: 295680\nmore")))
    model = build(arch)
    with pytest.warns(UserWarning, match="torch.compile failed \\(RuntimeError: out of resource: shared memory"):
        optimise(model, z, loss, 5, 0.01, compile=True)
    assert fell_back(model)
    # the same steps as a fit that never compiled: the failed backward left nothing behind
    for (_, a), (_, b) in zip(model.named_tensors(), eager.named_tensors()):
        assert torch.equal(a, b)


def test_the_failed_backwards_graph_is_freed_before_the_eager_retry(monkeypatch):
    # at full size on a GPU the failed graph's activations and the retry's would not both fit
    saved, alive = [], []
    monkeypatch.setattr(fit_module, "compiled", _backward_raising(RuntimeError("out of resource: shared memory"), saved=saved))
    arch = Architecture("deep-decoder", 4, 2, 3)
    z, target = seeded_input(arch, 8, 8, 0)[None], torch.rand(1, 3, 8, 8)

    def loss(out):  # its first call is the failing step's, its second the eager retry's
        alive.append(saved[0]() is not None)
        return mse_per_image(out, target)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        optimise(build(arch), z, loss, 2, 0.01, compile=True)
    assert len(saved) == 1 and alive[:2] == [True, False]


def test_a_backward_failure_after_the_first_step_is_not_taken_for_the_compilers(monkeypatch):
    monkeypatch.setattr(fit_module, "compiled", _backward_raising(ValueError("a real error in step 2"), from_call=2))
    arch = Architecture("deep-decoder", 4, 2, 3)
    model = build(arch)
    with pytest.raises(ValueError, match="step 2"):
        optimise(model, seeded_input(arch, 8, 8, 0)[None], lambda out: out.flatten(1).mean(1), 5, 0.01, compile=True)
    assert not fell_back(model)


def test_a_full_gpu_in_the_first_backward_is_reported_not_taken_for_a_compile_failure(monkeypatch):
    monkeypatch.setattr(fit_module, "compiled", _backward_raising(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    arch = Architecture("deep-decoder", 4, 2, 3)
    model = build(arch)
    with pytest.raises(RuntimeError, match="out of memory"):  # eager kernels would not fit either
        optimise(model, seeded_input(arch, 8, 8, 0)[None], lambda out: out.flatten(1).mean(1), 3, 0.01, compile=True)
    assert not fell_back(model)


def test_a_member_whose_loss_turns_nan_is_rolled_back_and_recovers():
    # NaN > bound is False, so the blow-up test once passed NaN by, and Adam's NaN second
    # moment would have kept every later step NaN even after a roll-back
    from ddcodec.fit import mse_per_image, optimise
    from ddcodec.nets import Architecture, build, seeded_input
    torch.manual_seed(0)
    arch, target = Architecture("deep-decoder", 4, 3, 3), torch.rand(2, 3, 16, 16)
    losses = []

    def run(inject):
        model = build(arch, seeds=(0, 1))
        z = torch.stack([seeded_input(arch, 16, 16, s) for s in (0, 1)])

        def progress(it, *_):
            if inject and it == 40:
                with torch.no_grad():
                    model.weight[1][0, 0, 0] = float("nan")  # member 0 only
        seen = []
        optimise(model, z, lambda out: mse_per_image(out, target), 100, 0.05, 0.05, progress=progress,
                 rollback_db=3.0, betas=(0.8, 0.99), observe=lambda out: seen.append(mse_per_image(out, target)))
        losses.append(torch.stack(seen))
        with torch.no_grad():
            return mse_per_image(model(z), target)
    clean, hit = run(False), run(True)
    assert not torch.isfinite(losses[1][40:50, 0]).all()  # the NaN got in (the reports come every 10)
    assert torch.isfinite(hit).all() and hit[0] < 2 * clean[0]  # member 0 is back on course
    assert torch.equal(losses[1][:, 1], losses[0][:, 1])  # and member 1 never noticed
    assert torch.isfinite(losses[1][60:, 0]).all()  # finite again within ten steps of the roll-back
