"""Shared fixtures: a small real image and a real .ddc file made from it, once per session."""
from importlib.resources import files

import numpy as np
import pytest
from PIL import Image

import ddcodec
from ddcodec import FitConfig, QuantConfig

SAMPLE = files("ddcodec") / "data" / "kodim23-192x128.png"
FAST_FIT = FitConfig(iters=150)
FAST_QUANT = QuantConfig(qat_iters=20)


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
def ddc_bytes(encoded) -> bytes:
    return encoded.data
