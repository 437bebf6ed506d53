"""Shared fixtures: a small real image and a real .ddc file made from it, once per session."""
import contextlib
import signal
from importlib.resources import files

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

import ddcodec
from ddcodec import FitConfig, QuantConfig

# No per-example deadline: how long an example takes depends on the machine (and on what else
# runs on it), and a test here must not; the hypothesis tests assert properties, not speed.
settings.register_profile("ddcodec", deadline=None)
settings.load_profile("ddcodec")

SAMPLE = files("ddcodec") / "data" / "kodim23-192x128.png"
FAST_FIT = FitConfig(iters=150)
FAST_QUANT = QuantConfig(qat_iters=20)


def assert_decodes_like_the_fit(decoded: np.ndarray, image: np.ndarray, result, slack: float = 0.15) -> None:
    """The decoded file is as close to the image as the float network was, less the rounding
    budget. The float PSNR comes from the network's own output, not from the decoder, so a
    decoder that ignored the weights (or returned grey) fails here; the encoder's reported
    PSNR is measured through that same decoder and proves nothing about it."""
    from ddcodec.metrics import psnr
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    got = psnr(decoded, image)
    if np.isinf(result.psnr_float):  # a fit that is exact: so must the file be
        assert np.isinf(got)
    else:
        assert got >= result.psnr_float - slack, (got, result.psnr_float)


def small(width: int, height: int, mode: str = "RGB") -> np.ndarray:
    """The bundled sample resized: natural-image content at a test-friendly size."""
    with Image.open(SAMPLE) as im:
        return np.asarray(im.convert(mode).resize((width, height), Image.LANCZOS)).copy()


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return small(48, 32)


@pytest.fixture(scope="session")
def encoded(image):
    return ddcodec.encode(image, channels=8, fit=FAST_FIT, quant=FAST_QUANT, device="cpu")


@pytest.fixture(scope="session")
def encoded_with_margin(image):
    # k=8 is below the width the codec gives a margin (fit.MARGIN_MIN_K): asked for here
    return ddcodec.encode(image, channels=8, fit=FitConfig(iters=150, margin=True), quant=FAST_QUANT, device="cpu")


@pytest.fixture(scope="session")
def ddc_bytes(encoded) -> bytes:
    return encoded.data


@contextlib.contextmanager
def returns_within(seconds: int):
    """Fail, instead of hanging the run, if the body takes longer than seconds: for code whose
    bug would be a loop without end (a varint writer given a negative value grew a buffer until
    the machine ran out of memory)."""
    def hung(*_):
        raise AssertionError(f"did not return within {seconds} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
