import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from ddcodec import entropy
from ddcodec.errors import CorruptError

tensor = st.integers(1, 300).flatmap(
    lambda n: st.tuples(st.integers(-5000, 5000), st.integers(0, 3000)).flatmap(
        lambda c: arrays(np.int64, n, elements=st.integers(c[0] - c[1], c[0] + c[1]))))


@given(st.lists(tensor, min_size=1, max_size=6))
@settings(deadline=None, max_examples=60)
def test_encode_decode_round_trips_random_integer_tensors(tensors):
    models = [entropy.fit_model(t) for t in tensors]
    data = entropy.encode(tensors, models)
    out = entropy.decode(data, models, [t.size for t in tensors])
    assert all(np.array_equal(a, b) for a, b in zip(out, tensors))


# out to the reader's limits: a span just under MAX_ALPHABET symbols, centres out to +-2^24
_HALF = (entropy.MAX_ALPHABET - 2) // 2
wide_tensor = st.integers(1, 200).flatmap(
    lambda n: st.tuples(st.integers(-entropy.MAX_INTEGER + _HALF, entropy.MAX_INTEGER - _HALF),
                        st.integers(0, _HALF)).flatmap(
        lambda c: arrays(np.int64, n, elements=st.one_of(
            st.sampled_from([c[0] - c[1], c[0] + c[1]]), st.integers(c[0] - c[1], c[0] + c[1])))))


@given(st.lists(wide_tensor, min_size=1, max_size=3))
@settings(deadline=None, max_examples=30)
def test_encode_decode_round_trips_tensors_out_to_the_readers_limits(tensors):
    models = [entropy.fit_model(t) for t in tensors]
    for m in models:
        m.validate()  # within what the reader takes
    data = entropy.encode(tensors, models)
    out = entropy.decode(data, models, [t.size for t in tensors])
    assert all(np.array_equal(a, b) for a, b in zip(out, tensors))


def _bits(t, model):
    """The bits the range coder spends on t under model, each probability floored as its leaky
    quantization floors it: the reference fit_model must minimise."""
    p = model.probabilities()
    return -np.log2(np.maximum(p[t - model.lo] / p.sum(), entropy.MIN_PROBABILITY)).sum()


@given(tensor, st.sampled_from([1 << 20, 700]))
@settings(deadline=None, max_examples=60)
def test_fit_model_picks_the_cheapest_decay_on_the_grid(t, rows):
    """The vectorised search (in chunks of decays when rows is small) against one decay at a time."""
    old = entropy.DECAY_ROWS
    entropy.DECAY_ROWS = rows
    try:
        m = entropy.fit_model(t)
    finally:
        entropy.DECAY_ROWS = old
    if m.lo == m.hi:
        return
    costs = [_bits(t, entropy.TensorModel(m.lo, m.hi, m.mu, int(d))) for d in entropy.DECAYS]
    assert (m.lo, m.hi, m.mu) == (t.min(), t.max(), int(np.median(t).round()))
    assert _bits(t, m) <= min(costs) * (1 + 1e-12)


@pytest.mark.parametrize("kind", ["outliers", "flat"])
def test_fit_model_picks_the_cheapest_decay_for_the_widest_alphabet(kind):
    """65,534 symbols: the decays come in chunks, and for a tight centre with outliers at
    both ends the small decays' probabilities underflow to 0, where the coder's floor holds."""
    rng = np.random.default_rng(3)
    if kind == "outliers":
        t = np.concatenate([np.round(rng.laplace(0, 2, 3000)), [-32767, 32766]]).astype(np.int64)
    else:
        t = rng.integers(-32767, 32767, 3000)
        t[:2] = -32767, 32766
    m = entropy.fit_model(t)
    assert m.hi - m.lo == 65533
    costs = [_bits(t, entropy.TensorModel(m.lo, m.hi, m.mu, int(d))) for d in entropy.DECAYS]
    assert _bits(t, m) == pytest.approx(min(costs), rel=1e-12) and np.isfinite(max(costs))


@pytest.mark.parametrize("n,outlier", [(100_000, 1000), (1000, 200)])
def test_a_far_outlier_does_not_push_the_decay_wide(n, outlier):
    # the coder spends at most 24 bits on the outlier, so a narrow decay suits the zeros best;
    # scored without that floor, every narrow decay cost inf and the choice took 11,872 bytes
    # (100,000 zeros and one 1000) where the best on the grid takes 24
    t = np.zeros(n, np.int64)
    t[0] = outlier
    chosen = len(entropy.encode([t], [entropy.fit_model(t)]))
    lo, hi, mu = 0, outlier, 0
    best = min(len(entropy.encode([t], [entropy.TensorModel(lo, hi, mu, int(d))])) for d in entropy.DECAYS[::8])
    assert chosen <= best + 8


def test_constant_tensor_costs_no_payload():
    t = np.full(100, 7)
    m = entropy.fit_model(t)
    assert entropy.encode([t], [m]) == b""
    assert np.array_equal(entropy.decode(b"", [m], [100])[0], t)


@pytest.mark.parametrize("scale", [0.3, 1.0, 10.0])
def test_laplace_tensor_codes_within_3_percent_of_its_empirical_entropy(scale):
    rng = np.random.default_rng(0)
    t = np.round(rng.laplace(0, scale, 4000)).astype(np.int64)
    _, counts = np.unique(t, return_counts=True)
    p = counts / t.size
    entropy_bits = -(counts * np.log2(p)).sum()
    data = entropy.encode([t], [entropy.fit_model(t)])
    assert len(data) * 8 <= 1.03 * entropy_bits + 64


@pytest.mark.parametrize("model", [
    entropy.TensorModel(0, 1 << 17, 0, 100),  # alphabet too large
    entropy.TensorModel(5, 4, 5, 100),  # empty range
    entropy.TensorModel(0, 9, 12, 100),  # centre outside
    entropy.TensorModel(0, 9, 3, 0),  # decay 0
])
def test_invalid_models_raise_before_constriction_is_called(model, monkeypatch):
    called = []  # decode turns constriction's own failures into CorruptError too: watch the call
    import constriction
    monkeypatch.setattr(constriction.stream.queue, "RangeDecoder", lambda *a: called.append(a))
    with pytest.raises(CorruptError):
        entropy.decode(b"\0\0\0\0", [model], [3])
    assert called == []


def test_the_decay_grid_is_pinned():
    """Version 2 files store an index into DECAYS: the grid is part of the format."""
    import hashlib
    assert len(entropy.DECAYS) == 159
    computed = np.unique(np.round(65536 / (1 + np.exp(-np.linspace(-7, 9.2, 160)))).astype(np.int64))
    assert np.array_equal(entropy.DECAYS, computed)
    assert hashlib.sha256(entropy.DECAYS.astype("<i8").tobytes()).hexdigest() == \
        "bda550cecde4374af9e361e0b2d3d7bf2f1b4a007757d424b125438b4511a957"
