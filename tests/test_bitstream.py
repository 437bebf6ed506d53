import dataclasses
import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

import ddcodec
from ddcodec import bitstream
from ddcodec.entropy import TensorModel
from ddcodec.errors import (CorruptError, FormatError, LimitError, NotDDCError, TruncatedError,
                            UnsupportedVersionError)
from ddcodec.nets import Architecture, tensor_shapes
from ddcodec.quant import STEP_CODE_MAX, STEP_CODE_MIN


@st.composite
def headers(draw):
    arch = Architecture("deep-decoder", draw(st.integers(1, 16)), draw(st.integers(1, 6)),
                        draw(st.sampled_from([1, 3])))
    models, codes = [], []
    for _ in tensor_shapes(arch):
        lo = draw(st.integers(-40000, 40000))
        hi = lo + draw(st.integers(0, 60000))
        models.append(TensorModel(lo, hi, draw(st.integers(lo, hi)), draw(st.integers(1, 65535))))
        codes.append(draw(st.integers(STEP_CODE_MIN, STEP_CODE_MAX)))
    return bitstream.Header(draw(st.integers(1, 4000)), draw(st.integers(1, 4000)), arch,
                            draw(st.integers(0, 2**64 - 1)), tuple(codes), tuple(models),
                            draw(st.sampled_from([0, bitstream.FLAG_TRANSPOSED])))


@given(headers(), st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4]))
@settings(deadline=None, max_examples=80)
def test_container_round_trips_random_headers_and_payloads(header, payload):
    h, p = bitstream.unpack(bitstream.pack(header, payload))
    assert h == header and p == payload


def test_every_truncation_of_a_real_file_raises_a_typed_error(ddc_bytes):
    for n in range(len(ddc_bytes)):
        with pytest.raises(FormatError):
            ddcodec.decode(ddc_bytes[:n])


@given(st.data())
@settings(deadline=None, max_examples=200)
def test_random_byte_flips_in_a_real_file_raise_a_typed_error(ddc_bytes, data):
    buf = bytearray(ddc_bytes)
    positions = data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=4, unique=True))
    for pos in positions:
        buf[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FormatError):
        ddcodec.decode(bytes(buf))


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_wrong_magic_is_not_a_ddc_file(ddc_bytes):
    with pytest.raises(NotDDCError):
        ddcodec.decode(b"\x89PNG" + ddc_bytes[4:])


def test_unknown_version_is_refused(ddc_bytes):
    with pytest.raises(UnsupportedVersionError):
        ddcodec.decode(_with_crc(ddc_bytes[:4] + b"\x07" + ddc_bytes[5:-4]))


def test_trailing_bytes_are_corruption(ddc_bytes):
    with pytest.raises(CorruptError):
        ddcodec.decode(ddc_bytes + b"\0")


def test_absurd_dimensions_are_refused_before_decoding(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    huge = dataclasses.replace(h, width=100_000, height=100_000)
    with pytest.raises(LimitError):
        ddcodec.decode(bitstream.pack(huge, payload))


def test_a_billion_symbols_is_refused(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)

    class Lying(bitstream.Header):
        @property
        def symbols(self):
            return 10**9

    with pytest.raises(CorruptError):
        ddcodec.decode(bitstream.pack(Lying(*(getattr(h, f.name) for f in dataclasses.fields(h))), payload))


def test_step_code_out_of_range_is_corruption(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    bad = dataclasses.replace(h, step_codes=(10_000,) + h.step_codes[1:])
    with pytest.raises(CorruptError):
        ddcodec.decode(bitstream.pack(bad, payload))


def test_empty_and_short_inputs_are_truncated():
    for data in (b"", b"\x89", b"\x89DDC", b"\x89DDC\x01"):
        with pytest.raises(TruncatedError):
            bitstream.unpack(data)
