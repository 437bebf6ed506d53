"""The seeded network input z (Heckel & Hand, sec. 2: a fixed random input, never trained).

The decoder must regenerate z bit for bit from the 64-bit seed in the file, on any machine.
torch's RNG differs between CPU and CUDA, and numpy's streams may change between versions, so
z comes from SplitMix64 (Steele et al., 2014) evaluated here with explicit uint64 arithmetic,
counter-based (value i depends only on seed and i), then an exact integer-to-float conversion.
"""
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
MAX_SEED = 2**64 - 1


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The first ``count`` outputs of SplitMix64 started at ``seed``, as uint64."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    with np.errstate(over="ignore"):
        i = np.arange(1, count + 1, dtype=np.uint64)
        z = np.uint64(seed) + i * _GOLDEN  # wraps mod 2**64, as the C reference does
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, shape, scale: float = 0.1) -> np.ndarray:
    """float32 values in [0, scale): the top 24 bits of each draw over 2**24 (exact in float32),
    times ``scale`` in float32 (one correctly rounded IEEE multiply, the same everywhere)."""
    count = int(np.prod(shape, dtype=np.int64))
    top = (splitmix64(seed, count) >> np.uint64(40)).astype(np.float32)
    u = top * np.float32(2.0**-24)
    return (u * np.float32(scale)).reshape(shape)
