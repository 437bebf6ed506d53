"""Integers <-> bytes with constriction's range coder.

Each tensor's integers are coded i.i.d. with a two-sided geometric distribution (a discrete
Laplace), p(n) proportional to r^|n - mu| on [lo, hi]. Its parameters are integers (lo, hi, mu
and r = decay / 2^16), and the probabilities are built with multiplications only (no exp or
pow, whose last bits vary by platform), so the decoder rebuilds the exact same model.
constriction panics on bad parameters, so everything is validated before it is called.
"""
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, CorruptError

MAX_ALPHABET = 1 << 16  # symbols a tensor may span; bounds the table the decoder allocates
# |q| at most this: the encoder's integers stay below 2^16, and with this bound every product
# of the exact decoder stays below 2^53 (exact.to_grid, docs/format.md), whatever the file says
MAX_INTEGER = 1 << 24
DECAY_ONE = 1 << 16
# candidate r: logit-spaced from 0.001 (almost every value at mu) to 0.9999 (nearly flat)
# The grid is part of the format (version 2 stores an index into it), so it is written out
# rather than computed with exp() at import: round(65536 / (1 + exp(-x))) for 160 x evenly
# spaced in [-7, 9.2], duplicates removed (tests/test_entropy.py recomputes it).
DECAYS = np.array([
    60, 66, 73, 81, 90, 99, 110, 122, 135, 149, 165, 183, 202, 224, 248, 274, 304, 336, 372,
    412, 455, 504, 557, 617, 682, 754, 834, 923, 1020, 1127, 1246, 1377, 1521, 1680, 1855,
    2048, 2260, 2493, 2750, 3031, 3339, 3677, 4047, 4452, 4894, 5376, 5901, 6471, 7090, 7760,
    8485, 9266, 10107, 11009, 11974, 13003, 14098, 15258, 16483, 17772, 19122, 20530, 21993,
    23506, 25063, 26658, 28283, 29931, 31594, 33263, 34929, 36584, 38219, 39827, 41401, 42932,
    44416, 45847, 47222, 48536, 49787, 50973, 52095, 53151, 54142, 55069, 55935, 56740, 57487,
    58179, 58819, 59409, 59952, 60451, 60909, 61328, 61712, 62063, 62383, 62675, 62941, 63184,
    63404, 63604, 63787, 63952, 64102, 64238, 64362, 64474, 64575, 64667, 64750, 64825, 64893,
    64955, 65011, 65061, 65107, 65148, 65186, 65220, 65250, 65278, 65303, 65325, 65345, 65364,
    65381, 65396, 65409, 65421, 65432, 65442, 65452, 65460, 65467, 65474, 65480, 65485, 65490,
    65495, 65499, 65502, 65505, 65508, 65511, 65514, 65516, 65518, 65519, 65521, 65522, 65524,
    65525, 65526, 65527, 65528, 65529,
], dtype=np.int64)


@dataclass(frozen=True)
class TensorModel:
    lo: int  # smallest integer in the tensor
    hi: int  # largest
    mu: int  # centre of the Laplace
    decay: int  # r = decay / 65536, in 1..65535; unused when lo == hi

    def validate(self) -> None:
        if self.hi < self.lo or self.hi - self.lo >= MAX_ALPHABET:
            raise CorruptError(f"symbol range [{self.lo}, {self.hi}] out of bounds")
        if max(-self.lo, self.hi) > MAX_INTEGER:
            raise CorruptError(f"symbol range [{self.lo}, {self.hi}] beyond the integers a file may hold (+-2^24)")
        if not self.lo <= self.mu <= self.hi:
            raise CorruptError("model centre outside the symbol range")
        if self.lo != self.hi and not 0 < self.decay < DECAY_ONE:
            raise CorruptError(f"model decay {self.decay} out of range")

    def probabilities(self) -> np.ndarray:
        r = self.decay / DECAY_ONE
        right = np.cumprod(np.full(self.hi - self.mu, r))  # r, r^2, ... by repeated multiply
        left = np.cumprod(np.full(self.mu - self.lo, r))[::-1]
        return np.concatenate([left, [1.0], right])


def fit_model(q: np.ndarray) -> TensorModel:
    """The model (from a fixed grid of decays) that codes q in the fewest bits."""
    q = q.astype(np.int64).ravel()
    lo, hi = int(q.min()), int(q.max())
    mu = int(np.median(q).round())
    if lo == hi:
        return TensorModel(lo, hi, mu, int(DECAYS[0]))  # the decay is unused; any grid value
    if hi - lo >= MAX_ALPHABET:
        raise CorruptError(f"tensor spans {hi - lo + 1} symbols, more than {MAX_ALPHABET}")
    # Every decay's cost at once, from the histogram: the rate control writes each bank member
    # many times, and a loop over 159 decays cost ~2 ms a tensor in numpy's overheads
    counts = np.bincount(q - lo)
    used = np.flatnonzero(counts)
    rows = max(1, DECAY_ROWS // (hi - lo))
    bits = np.concatenate([_costs(DECAYS[i:i + rows], used + lo - mu, counts[used], mu - lo, hi - mu)
                           for i in range(0, len(DECAYS), rows)])
    return TensorModel(lo, hi, mu, int(DECAYS[np.argmin(bits)]))  # argmin: the first of equals


DECAY_ROWS = 1 << 20  # decays x alphabet: bounds _costs' tables for the widest tensors


# The range coder's probabilities are 24-bit fixed point, and its leaky quantization gives
# every symbol of the alphabet at least one unit: no symbol costs more than 24 bits, however
# small the Laplace makes it.
MIN_PROBABILITY = 2.0**-24


def _costs(decays: np.ndarray, offsets: np.ndarray, counts: np.ndarray, left: int, right: int) -> np.ndarray:
    """Bits to code counts[j] symbols at offset offsets[j] from mu, for each decay: the table
    TensorModel.probabilities builds (its repeated multiplication, one row per decay), each
    probability floored where the coder floors it. Unfloored, a far outlier made every narrow
    decay cost inf (or 240 bits where the coder spends 24): one outlier in 100,000 zeros took
    11,872 bytes at the decay chosen against 24 at the best one."""
    r = decays[:, None] / DECAY_ONE
    powers = np.cumprod(np.broadcast_to(r, (len(decays), max(left, right))), axis=1)  # r^1, r^2, ...
    total = 1 + powers[:, :left].sum(1) + powers[:, :right].sum(1)
    table = np.concatenate([np.ones_like(r), powers], axis=1)  # r^0, r^1, ...
    return -(counts * np.log2(np.maximum(table[:, np.abs(offsets)] / total[:, None], MIN_PROBABILITY))).sum(1)


def decay_index(model: TensorModel) -> int:
    """The model's decay as an index into DECAYS (what version 2 stores)."""
    i = int(np.searchsorted(DECAYS, model.decay))
    if i < len(DECAYS) and DECAYS[i] == model.decay:
        return i
    if model.lo == model.hi:  # a constant tensor's decay is unused (version 1 wrote 1)
        return 0
    raise ConfigError(f"decay {model.decay} is not on the grid")


def _categorical(model: TensorModel):
    import constriction

    return constriction.stream.model.Categorical(model.probabilities(), perfect=False)


def encode(tensors, models) -> bytes:
    """Concatenate every tensor's symbols into one range-coder stream (uint32 words, LE)."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    for q, model in zip(tensors, models):
        model.validate()
        if model.lo == model.hi:
            continue  # a constant tensor costs no payload
        sym = (np.asarray(q, dtype=np.int64).ravel() - model.lo).astype(np.int32)
        enc.encode(sym, _categorical(model))
    return enc.get_compressed().astype("<u4").tobytes()


def decode(payload: bytes, models, counts) -> list:
    """Inverse of encode(); counts[i] is tensor i's number of symbols."""
    import constriction

    if len(payload) % 4:
        raise CorruptError("payload length is not a multiple of 4")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    for model in models:
        model.validate()
    dec = constriction.stream.queue.RangeDecoder(words)
    out = []
    try:
        for model, n in zip(models, counts):
            if model.lo == model.hi:
                out.append(np.full(n, model.lo, dtype=np.int64))
                continue
            sym = dec.decode(_categorical(model), int(n))
            out.append(np.asarray(sym, dtype=np.int64) + model.lo)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - constriction reports bad data as AssertionError or a Rust panic
        raise CorruptError(f"payload does not decode under its entropy models ({type(e).__name__})") from None
    return out
