"""Integers <-> bytes with constriction's range coder.

Each tensor's integers are coded i.i.d. with a two-sided geometric distribution (a discrete
Laplace), p(n) proportional to r^|n - mu| on [lo, hi]. Its parameters are integers (lo, hi, mu
and r = decay / 2^16), and the probabilities are built with multiplications only (no exp or
pow, whose last bits vary by platform), so the decoder rebuilds the exact same model.
constriction panics on bad parameters, so everything is validated before it is called.
"""
from dataclasses import dataclass

import numpy as np

from .errors import CorruptError

MAX_ALPHABET = 1 << 16  # symbols a tensor may span; bounds the table the decoder allocates
DECAY_ONE = 1 << 16
# candidate r: logit-spaced from 0.001 (almost every value at mu) to 0.9999 (nearly flat)
# The grid is part of the format (version 2 stores an index into it): these exact integers.
DECAYS = np.unique(np.round(DECAY_ONE / (1 + np.exp(-np.linspace(-7, 9.2, 160)))).astype(np.int64))


@dataclass(frozen=True)
class TensorModel:
    lo: int  # smallest integer in the tensor
    hi: int  # largest
    mu: int  # centre of the Laplace
    decay: int  # r = decay / 65536, in 1..65535; unused when lo == hi

    def validate(self) -> None:
        if self.hi < self.lo or self.hi - self.lo >= MAX_ALPHABET:
            raise CorruptError(f"symbol range [{self.lo}, {self.hi}] out of bounds")
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
    best, best_bits = None, np.inf
    for decay in DECAYS:
        model = TensorModel(lo, hi, mu, int(decay))
        p = model.probabilities()
        with np.errstate(divide="ignore"):  # p underflows to 0: that decay costs inf bits
            bits = -np.log2(p[q - lo] / p.sum()).sum()
        if bits < best_bits:
            best, best_bits = model, bits
    return best


def decay_index(model: TensorModel) -> int:
    """The model's decay as an index into DECAYS (what version 2 stores)."""
    i = int(np.searchsorted(DECAYS, model.decay))
    if i < len(DECAYS) and DECAYS[i] == model.decay:
        return i
    if model.lo == model.hi:  # a constant tensor's decay is unused (version 1 wrote 1)
        return 0
    raise CorruptError(f"decay {model.decay} is not on the grid")


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
