import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

from ddcodec.errors import ConfigError
from ddcodec.fit import mse_per_image, optimise
from ddcodec.nets import (Architecture, DeepDecoder, build, canvas, crop, decoder_program, input_shape, param_count,
                          seeded_input, upsample2x)


@given(st.integers(1, 64), st.integers(1, 8), st.sampled_from([1, 3]))
def test_param_count_is_d_k2_plus_2dk_plus_ck(k, d, c):
    arch = Architecture(channels=k, layers=d, out_channels=c)
    n = sum(p.numel() for p in DeepDecoder(arch).parameters())
    assert n == param_count(arch) == d * k * k + 2 * d * k + c * k


@given(st.integers(1, 12), st.integers(1, 7), st.sampled_from([1, 3]), st.integers(1, 40),
       st.integers(1, 40), st.integers(0, 2**32))
@settings(deadline=None, max_examples=40)
def test_folding_the_affine_into_the_next_conv_keeps_the_output(k, d, c, h, w, seed):
    arch = Architecture(channels=k, layers=d, out_channels=c)
    net = DeepDecoder(arch, (seed, seed + 1))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fitted net's scales and shifts, negative scales included
        for _, t in net.named_tensors():
            t.add_(torch.randn(t.shape, generator=gen))
    z = torch.stack([seeded_input(arch, h, w, s) for s in (seed, seed + 1)])
    folded = net.fold()
    stored = sum(t[0].numel() for _, t in folded.named_tensors())
    assert stored == param_count(folded.arch) == d * k * k + (d - 1) * k + c * k + c
    # fp32 rounding: a nearly constant channel is scaled up by 1/sqrt(var + eps), up to ~300x,
    # so the two orders of operations can differ by ~1e-4 (hypothesis found k=3, d=3, c=1,
    # 17x5, seed 27); 1e-3 is a quarter of an 8-bit level
    assert torch.allclose(folded(z), net(z), atol=1e-3)


def test_param_count_of_the_paper_default_is_25536():
    assert param_count(Architecture(channels=64, layers=6, out_channels=3)) == 25536


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
@settings(deadline=None)
def test_upsample2x_equals_bilinear_interpolate(h, w, seed):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))  # replayable by hypothesis
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(upsample2x(x), ref, atol=1e-6)


def test_output_covers_the_image_for_any_size():
    arch = Architecture(channels=4, layers=4)
    for h, w in [(1, 1), (333, 500), (9, 17)]:
        out = DeepDecoder(arch)(seeded_input(arch, h, w, 0)[None])
        assert out.shape[2] >= h and out.shape[3] >= w and out.shape[2] - h < 8


def test_bank_of_three_equals_three_separate_fits():
    arch = Architecture(channels=8, layers=4)
    torch.manual_seed(0)
    targets = torch.rand(3, 3, 16, 24)
    seeds = [5, 6, 7]

    def run(idx):
        model = DeepDecoder(arch, [seeds[i] for i in idx])
        z = torch.stack([seeded_input(arch, 16, 24, seeds[i]) for i in idx])
        optimise(model, z, lambda o: mse_per_image(o, targets[idx]), 60, 0.01, 0.1)
        with torch.no_grad():
            return model(z)

    bank = run([0, 1, 2])
    for i in range(3):
        assert torch.allclose(bank[i], run([i])[0], atol=1e-4)


def test_skip_net_has_about_2_2_million_parameters_and_its_listed_shapes():
    from ddcodec.nets import build, tensor_shapes
    arch = Architecture("skip", 128, 5, 3)
    net = build(arch)
    assert [tuple(t.shape[1:]) for _, t in net.named_tensors()] == [s for _, s in tensor_shapes(arch)]
    assert 2.1e6 < param_count(arch) < 2.3e6


def test_skip_net_output_covers_odd_sizes():
    from ddcodec.nets import build
    arch = Architecture("skip", 8, 3, 1)
    z = seeded_input(arch, 13, 21, 0)[None]
    assert z.shape[1] == 32 and z.shape[2] % 8 == 0
    assert build(arch)(z).shape[-2:] == z.shape[-2:]


def _first_block_dead(net, arch, seed):
    """[k] bools: first-block channels the ReLU zeroes at every pixel of the seeded input."""
    z = seeded_input(arch, 128, 192, seed)[None]  # kodak-mini size: a 6x4 input
    w0 = net.weight[0][0]
    x = F.relu(upsample2x((w0 @ z[0].flatten(1)).view(1, -1, *z.shape[2:])))
    return x.flatten(2).amax(2)[0] <= 0


@given(st.integers(8, 64), st.integers(0, 2**32))
@settings(deadline=None, max_examples=25)
def test_live_first_block_flips_the_sign_of_negative_rows_only(k, seed):
    arch = Architecture(channels=k, layers=3)
    plain, live = DeepDecoder(arch, (seed,)), build(arch, (seed,), live_first_block=True)
    w, v = plain.weight[0].detach(), live.weight[0].detach()
    assert torch.equal(v.abs(), w.abs())  # magnitudes and seeding kept
    assert (v.sum(2) >= 0).all()
    flipped = w.sum(2) < 0
    assert torch.equal(v[flipped], -w[flipped]) and torch.equal(v[~flipped], w[~flipped])
    for i in range(1, 3):  # only block 0 changes
        assert torch.equal(live.weight[i], plain.weight[i])


def test_torch_init_leaves_first_block_channels_dead_and_the_live_start_none():
    arch = Architecture(channels=64, layers=6)
    with torch.no_grad():
        dead = _first_block_dead(DeepDecoder(arch, (0,)), arch, 0)
        assert int(dead.sum()) >= 6  # 13 of 64 here; more die in the fit (45-48 % in RD files)
        assert not _first_block_dead(build(arch, (0,), live_first_block=True), arch, 0).any()


@given(st.integers(1, 12), st.integers(1, 6), st.sampled_from([1, 3]), st.integers(1, 40),
       st.integers(1, 40), st.integers(0, 2**32))
@settings(deadline=None, max_examples=30)
@example(4, 3, 3, 8, 8, 4)
@example(4, 3, 3, 16, 16, 4)
@example(2, 2, 3, 33, 1, 1_168_113_738)  # found by CI: a zero-in-theory shift gradient
@example(1, 2, 3, 7, 21, 115)
@example(6, 6, 3, 1, 1, 0)  # found by hypothesis: one input pixel (below)
def test_the_fused_output_conv_computes_what_the_bmm_does(k, d, c, h, w, seed):
    arch = Architecture(channels=k, layers=d, out_channels=c)
    net = DeepDecoder(arch, (seed, seed + 1))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, t in net.named_tensors():
            t.add_(torch.randn(t.shape, generator=gen))
    z = torch.stack([seeded_input(arch, h, w, s) for s in (seed, seed + 1)])
    folded = net.fold()
    for model in (net, folded):  # the fit's network and the fine-tuning's
        a, b = model(z), model(z, fused=True)
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    # and its gradients: the fused form is what a compiled fit differentiates. They are compared
    # in float64. In float32 a block of few pixels has channels of near-zero variance, whose
    # normalisation scales rounding up by as much as 1/sqrt(eps) = 316, and a gradient that is
    # zero in exact arithmetic (a shift whose channel stays all-positive through the ReLU is a
    # constant the next normalisation removes) is pure rounding, sized by the largest gradient
    # rather than its own: hypothesis and CI found pairs 2x apart that way. In float64 the
    # rounding is 1e-16; even compounded through six 1x1 blocks (5e-12 of the largest gradient,
    # the worst of 3,000 examples) it stays under the 1e-9 allowed, which any real difference
    # between the two paths would exceed. Except from one input pixel: then every channel is
    # constant at every block, every gradient before the last normalisation but its shift is
    # zero in exact arithmetic, and the rounding, amplified by up to 316 a normalisation, reached
    # 2e-7 of the largest in block 0 (k=6, d=6, 1x1); there only the last block's and the
    # output's gradients are compared, whose rounding passed one normalisation at most.
    one_pixel = z.shape[-2] * z.shape[-1] == 1
    compared = lambda name: not one_pixel or name.startswith(("out.", f"block{d - 1}."))  # noqa: E731
    net64, z64 = copy.deepcopy(net).double(), z.double()
    grads = []
    for fused in (False, True):
        net64.zero_grad()
        net64(z64, fused=fused).square().sum().backward()
        grads.append([t.grad.clone() for name, t in net64.named_tensors() if compared(name)])
    scale = max(float(g.norm()) for g in grads[0])
    for ga, gb in zip(*grads):
        assert float((ga - gb).norm()) <= 1e-9 * (float(ga.norm()) + scale)


@given(st.integers(1, 6), st.integers(1, 4), st.sampled_from([1, 3]), st.integers(1, 2), st.integers(0, 3))
@settings(max_examples=15, deadline=None)
def test_the_shared_program_with_its_neutral_terms_is_each_nets_forward(k, d, c, bank, seed):
    # the compiled path runs decoder_program(z, *program_args(p)): zero biases for the trained
    # net, unit scales and zero shifts for the folded one; it must compute each net's forward
    arch = Architecture(channels=k, layers=d, out_channels=c)
    net = build(arch, tuple(range(seed, seed + bank)))
    with torch.no_grad():  # scales and shifts away from 1 and 0, so that they matter
        for s, b in zip(net.scale, net.shift):
            s.uniform_(0.5, 2.0)
            b.uniform_(-0.5, 0.5)
    z = torch.stack([seeded_input(arch, 9, 13, seed + i) for i in range(bank)])
    for model in (net, net.fold()):
        p = [t for _, t in model.named_tensors()]
        with torch.no_grad():
            expected = model(z)
            assert torch.allclose(decoder_program(z, *model.program_args(p)), expected, atol=1e-6)
            assert torch.allclose(decoder_program(z, *model.program_args(p), fused=True), expected, atol=1e-6)


def test_the_shared_program_keeps_a_bf16_activation_in_bf16():
    # under autocast the bmm gives bf16; the fp32 zero biases must not lift the rest of the
    # block to fp32 (twice the bytes), so the program's output dtype is the plain forward's
    arch = Architecture(channels=4, layers=3)
    net = build(arch)
    z = seeded_input(arch, 8, 8, 0)[None]
    for model in (net, net.fold()):
        p = [t for _, t in model.named_tensors()]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            plain, shared = model(z), decoder_program(z, *model.program_args(p))
        assert shared.dtype == plain.dtype == torch.bfloat16
        assert torch.allclose(shared.float(), plain.float(), atol=1e-2)


def test_a_one_pixel_block_passes_no_gradient_to_the_weights_before_it():
    # its normalisation is 0 whatever its input, so the output does not depend on them
    from ddcodec.nets import Architecture, build, seeded_input
    arch = Architecture("deep-decoder", 4, 1, 3)
    model = build(arch)
    out = model(seeded_input(arch, 1, 1, 0)[None])
    first = model.named_tensors()[0][1]  # block 0's conv
    out.sum().backward()
    assert first.grad is not None and float(first.grad.abs().max()) == 0.0


def test_folding_a_float64_net_keeps_float64_and_the_function():
    from ddcodec.nets import Architecture, build, seeded_input
    arch = Architecture("deep-decoder", 5, 3, 3)
    model = build(arch, seeds=(0, 1)).double()
    with torch.no_grad():
        for _, t in model.named_tensors():
            t.add_(torch.randn_like(t) * 0.1)  # scales and shifts off their init too
        z = torch.stack([seeded_input(arch, 12, 8, s) for s in (0, 1)]).double()
        folded = model.fold()
        assert all(t.dtype == torch.float64 for _, t in folded.named_tensors())
        assert float((folded(z) - model(z)).abs().max()) < 1e-12


@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 8), st.booleans())
@settings(deadline=None, max_examples=300)
def test_the_canvas_holds_the_image_at_its_corner_or_centred_with_a_margin_on_every_side(h, w, layers, margin):
    arch = Architecture("deep-decoder", 4, layers, 3, margin=margin)
    ch, cw, top, left = canvas(arch, h, w)
    f = 2 ** (layers - 1)
    m = f // 4 if margin else 0
    assert ch % f == 0 and cw % f == 0 and input_shape(arch, h, w) == (4, ch // f, cw // f)
    assert min(top, left, ch - top - h, cw - left - w) >= m  # the margin on every side
    assert ch - h - 2 * m < f and cw - w - 2 * m < f  # the smallest canvas that has it
    if margin:
        assert abs((ch - top - h) - top) <= 1 and abs((cw - left - w) - left) <= 1  # centred
    else:
        assert top == left == 0  # the corner: the layout of the files before version 5
    grid = torch.arange(ch * cw).reshape(1, ch, cw)
    assert torch.equal(crop(arch, grid, h, w), grid[:, top:top + h, left:left + w])
    assert crop(arch, grid, h, w).shape == (1, h, w)


def test_only_the_deep_decoder_has_a_margin():
    with pytest.raises(ConfigError, match="margin"):
        Architecture("skip", 8, 3, 3, margin=True)
