"""The exact decoder: each piece does the arithmetic its docstring promises, so the pixels
cannot depend on the machine, the thread count or how the work is split."""
import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import ddcodec
from ddcodec import exact
from ddcodec.codec import _to_uint8, load_model
from ddcodec.nets import Architecture, build, crop, seeded_input, tensor_shapes, upsample2x

DATA = Path(__file__).parent / "data"


def test_thresholds_are_the_sigmoid_rounding_edges_symmetric_about_zero():
    t = exact.thresholds()
    assert t.shape == (255,) and bool((t[1:] > t[:-1]).all())
    assert float(t[127]) == 0.0  # logit(127.5 / 255) = logit(1/2)
    assert torch.equal(t, -t.flip(0))  # logit(1 - p) = -logit(p), correctly rounded both ways
    for m in (1, 60, 200, 255):
        p = 1 / (1 + math.exp(-float(t[m - 1])))
        assert abs(255 * p - (m - 0.5)) < 1e-9


@settings(deadline=None, max_examples=200)
@given(st.floats(-30, 30))
def test_a_logit_decodes_to_255_sigmoid_rounded(y):
    level = int(exact.to_levels(torch.tensor([y], dtype=torch.float64))[0])  # what the decoder writes
    v = 255 / (1 + math.exp(-y))
    if abs(v - math.floor(v) - 0.5) > 1e-6:  # away from an edge, where float rounding may decide
        assert level == round(v)


def _tree(values):
    """The documented order, in Python floats: halve, add the halves elementwise, repeat."""
    while len(values) > 1:
        if len(values) % 2:
            values = values + [0.0]
        h = len(values) // 2
        values = [a + b for a, b in zip(values[:h], values[h:])]
    return values[0]


@settings(deadline=None, max_examples=100)
@given(st.lists(st.floats(-1e6, 1e6, allow_subnormal=False), min_size=1, max_size=300))
def test_pairwise_sum_adds_in_the_one_documented_order(values):
    x = torch.tensor([values, values[::-1]], dtype=torch.float64)
    got = exact.pairwise_sum(x)
    assert float(got[0]) == _tree(list(values))  # bit for bit, not approximately
    assert float(got[1]) == _tree(list(values[::-1]))


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**32 - 1),
       st.sampled_from([2.0**-7, 0.0123, 3.5, 2.0**20]))
def test_fixed_product_is_the_exact_product_of_the_grid_values_rounded_once(m, k, n, seed, step):
    rng = np.random.default_rng(seed)
    q = torch.from_numpy(rng.integers(-3000, 3000, (m, k)).astype(np.float64))
    x = torch.from_numpy(rng.normal(0, 3, (k, n)))
    grid = [[Fraction(round(float(v) * 2**exact.FRACTION_BITS), 2**exact.FRACTION_BITS) for v in row] for row in x.tolist()]
    got = exact.fixed_product(q, step, x.clone())
    for i in range(m):
        for j in range(n):
            dot = sum(Fraction(int(q[i, c])) * grid[c][j] for c in range(k))
            assert float(got[i, j]) == float(dot * Fraction(step))  # one rounding: of the exact value


def test_the_grid_gets_coarser_only_when_the_product_could_pass_2_to_the_53():
    q = torch.full((1, 4), 2.0**30, dtype=torch.float64)
    x = torch.full((4, 3), 2.0**5, dtype=torch.float64)
    xi, s = exact.to_grid(x.clone(), q)
    assert s == 15  # 2^32 * (2^(5+S) + 1) < 2^53 holds for S = 15, not for 16
    assert 4 * 2.0**30 * float(xi.abs().max()) < exact.EXACT_LIMIT
    _, s = exact.to_grid(torch.full((4, 3), 0.5, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64))
    assert s == exact.FRACTION_BITS


def _random_file_tensors(arch, seed, scale=300):
    rng = np.random.default_rng(seed)
    return [rng.integers(-scale, scale, s) for _, s in tensor_shapes(arch)]


@pytest.mark.parametrize("folded", [True, False])
def test_splitting_a_block_into_channel_chunks_leaves_every_pixel_as_it_was(folded, monkeypatch):
    arch = Architecture(channels=11, layers=4, folded=folded)
    ints, steps = _random_file_tensors(arch, 1), [0.004] * len(tensor_shapes(arch))
    z = seeded_input(arch, 40, 56, 3)
    outs = []
    for chunk in (1, 4, 8, 64):
        monkeypatch.setattr(exact, "channels_per_pass", lambda k, pixels, device, c=chunk: min(k, c))
        outs.append(exact.render(arch, ints, steps, z))
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
@settings(deadline=None, max_examples=40)
def test_the_exact_upsampling_is_the_networks_bit_for_bit(c, h, w, seed):
    """exact.upsample2x reorganises nets.upsample2x's memory traffic; every value must stay
    the same IEEE sum of the same two products, one-pixel sides included."""
    x = torch.randn(c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 1e3
    ours, net = exact.upsample2x(x), upsample2x(x)
    assert ours.shape == net.shape == (c, 2 * h, 2 * w)
    assert torch.equal(ours.view(torch.int64), net.view(torch.int64))


def test_a_gpu_pass_takes_whole_blocks_and_a_cpu_pass_cache_sized_chunks():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    assert exact.channels_per_pass(64, 768 * 512, cuda) == 64
    assert exact.channels_per_pass(64, exact.GPU_VALUES // 5, cuda) == 5  # as many as fit
    assert exact.channels_per_pass(64, 2 * exact.GPU_VALUES, cuda) == 1
    assert exact.channels_per_pass(64, 768 * 512, cpu) == exact.CPU_VALUES // (768 * 512) < 8
    assert exact.channels_per_pass(22, 256 * 171, cpu) == 22  # a tile's block at once
    assert exact.channels_per_pass(64, 4 * exact.CPU_VALUES, cpu) == 1


def test_a_full_size_file_decodes_to_its_stored_pixel_hash_on_any_machine():
    """A file where the float32 network is not exact (788 of its 1.2 M values one level away
    on the machine that made the hash): a float decode elsewhere would not reproduce the
    hash, and the exact one must. CI runs this on another machine."""
    expect = json.loads((DATA / "exact-kodim02-tiles.json").read_text())
    img = ddcodec.decode((DATA / "exact-kodim02-tiles.ddc").read_bytes())
    assert hashlib.sha256(img.tobytes()).hexdigest() == expect["pixels_sha256"]


@pytest.mark.parametrize("fixture", ["encoded", "encoded_with_margin"])
def test_the_exact_decode_is_within_a_level_of_the_float_network(fixture, request):
    encoded = request.getfixturevalue(fixture)
    header, model = load_model(encoded.data)
    z = seeded_input(header.arch, header.height, header.width, header.seed)[None]
    with torch.no_grad():
        ref = _to_uint8(crop(header.arch, model(z), header.height, header.width))[0]
    assert np.abs(ddcodec.decode(encoded.data).astype(int) - ref).max() <= 1


def test_weights_large_enough_to_overflow_still_decode_to_an_image():
    arch = Architecture(channels=4, layers=3, folded=True)
    ints = [np.full(s, 2**31 - 1, np.int64) for _, s in tensor_shapes(arch)]
    out = exact.render(arch, ints, [2.0**100] * len(ints), seeded_input(arch, 8, 8, 0))
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 8)


@pytest.mark.parametrize("kind,k,sign", [("deep-decoder", 256, 1), ("deep-decoder", 256, -1), ("skip", 8, 1)])
def test_the_largest_weights_a_file_may_hold_keep_every_product_below_2_to_the_53(kind, k, sign, monkeypatch):
    # the reader takes integers up to +-MAX_INTEGER (spanning under 2^16 a tensor) and steps up
    # to 2^5: with every weight there (two values, so no normalisation sees a constant), each
    # product's bound must hold without reaching the grid's last resort
    from ddcodec import bitstream, entropy
    from ddcodec.quant import STEP_CODE_MAX
    arch = Architecture(kind, k, 3, 3, folded=kind == "deep-decoder")
    big = entropy.MAX_INTEGER
    ints = []
    for _, shape in tensor_shapes(arch):
        q = np.full(shape, big, np.int64)
        q.reshape(-1)[::2] = big - entropy.MAX_ALPHABET + 1
        ints.append(sign * q)  # -2^24 is as legal as 2^24
    models = [entropy.fit_model(q) for q in ints]
    header = bitstream.Header(16, 16, arch, 0, (STEP_CODE_MAX,) * len(ints), tuple(models), 0)
    data = bitstream.pack(header, entropy.encode(ints, models))
    held = []
    real = exact.to_grid

    def checked(x, q):
        largest = float(x.abs().max()) if x.numel() else 0.0
        xi, s = real(x, q)
        held.append(math.isfinite(largest) and s > -1000 and
                    int(q.abs().sum(1).max()) * (math.floor(largest * 2.0**s) + 1) < exact.EXACT_LIMIT)
        return xi, s
    monkeypatch.setattr(exact, "to_grid", checked)
    out = ddcodec.decode(data)
    assert out.shape == (16, 16, 3) and held and all(held)


@pytest.mark.parametrize("lo,hi", [(-(1 << 24) - 3, -(1 << 24)), ((1 << 24) - 2, (1 << 24) + 1), (1 << 40, (1 << 40) + 3)])
def test_a_file_with_integers_beyond_2_to_the_24_is_refused(lo, hi, monkeypatch):
    from ddcodec import bitstream, entropy
    from ddcodec.errors import CorruptError
    monkeypatch.setattr(bitstream, "_check_writable", lambda h: None)  # a hostile writer's file
    arch = Architecture(channels=2, layers=2, folded=True)
    shapes = tensor_shapes(arch)
    models = [entropy.TensorModel(lo, hi, lo, int(entropy.DECAYS[0]))] + [entropy.TensorModel(0, 0, 0, 0)] * (len(shapes) - 1)
    header = bitstream.Header(4, 4, arch, 0, (0,) * len(shapes), tuple(models), 0)
    data = bitstream.pack(header, b"\0" * 16)
    with pytest.raises(CorruptError, match="2\\^24"):
        ddcodec.decode(data)


def test_non_finite_activations_reach_the_grid_as_zero_and_the_largest_floats():
    x = torch.tensor([[math.nan, math.inf, -math.inf, 1.0]], dtype=torch.float64)
    xi, s = exact.to_grid(x, torch.ones(1, 1, dtype=torch.float64))
    assert bool(torch.isfinite(xi).all()) and float(xi[0, 0]) == 0.0
    assert float(xi[0, 1]) == -float(xi[0, 2]) > 0
    assert s < exact.FRACTION_BITS  # the largest float forced a coarser grid


def test_the_skip_net_decodes_within_a_level_of_its_float_network_whatever_the_bands(monkeypatch):
    arch = Architecture(kind="skip", channels=12, layers=3)
    ints, steps = _random_file_tensors(arch, 2, 60), [0.01] * len(tensor_shapes(arch))
    z = seeded_input(arch, 24, 40, 1)
    model = build(arch)
    with torch.no_grad():
        for (_, t), q, s in zip(model.named_tensors(), ints, steps):
            t.copy_(torch.from_numpy(q[None].astype(np.float32)) * np.float32(s))
        ref = _to_uint8(model(z[None]))[0]
    whole = exact.render_skip(arch, ints, steps, z)
    assert np.abs(whole.permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1
    assert whole.float().std() > 0  # an image, not a constant
    monkeypatch.setattr(exact, "BAND_VALUES", 64)  # a band of one output row per product
    assert torch.equal(exact.render_skip(arch, ints, steps, z), whole)


def _channels_permuted(data: bytes, seed: int) -> bytes:
    """The same network with each block's channels in another order: row i of a block's conv,
    its folded bias and column i of the next conv move together, so the function is unchanged
    and only the order of the sums over channels differs."""
    from ddcodec import bitstream, entropy
    from ddcodec.decoding import _parse
    header, ints = _parse(data, 2**62)
    d, k = header.arch.layers, header.arch.channels
    ints, rng = [q.copy() for q in ints], np.random.default_rng(seed)
    for i in range(d):
        p = rng.permutation(k)
        ints[i] = ints[i][p]
        if i >= 1:
            ints[d][i - 1] = ints[d][i - 1][p]
        nxt = i + 1 if i < d - 1 else d + 1  # the next block's conv, or the output conv
        ints[nxt] = ints[nxt][:, p]
    return bitstream.pack(header, entropy.encode([q.ravel() for q in ints], header.models))


def test_the_decode_depends_on_neither_the_order_of_its_sums_nor_the_thread_count():
    # A float32 decoder's sums round by their order: at this size (256x256, k=64) a permutation
    # of the channels moved 4 of 196,608 float-decoded values by a level on this CPU, where a
    # change of thread count moved none (at any size tried). The exact decoder's products are
    # integers summed exactly, in any order.
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    res = ddcodec.encode(img, 64, fit=ddcodec.FitConfig(iters=3), quant=ddcodec.QuantConfig(qat_iters=0), device="cpu")
    assert ddcodec.info(res.data)["version"] == 5  # the folded network, whose tensors this permutes (with a margin)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, before))
        ref = ddcodec.decode(res.data)
        torch.set_num_threads(1)
        for seed in (1, 2):
            other = _channels_permuted(res.data, seed)
            assert other != res.data
            assert np.array_equal(ddcodec.decode(other), ref)
    finally:
        torch.set_num_threads(before)
