import dataclasses
from pathlib import Path
import struct
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import ddcodec
from ddcodec import bitstream
from ddcodec.entropy import DECAYS, TensorModel
from ddcodec.errors import (ConfigError, CorruptError, FormatError, ImageError, LimitError, NotDDCError, TruncatedError,
                            UnsupportedVersionError)
from ddcodec.nets import Architecture, build, macs, tensor_shapes, work
from ddcodec.quant import STEP_CODE_MAX, STEP_CODE_MIN

from .conftest import returns_within

DATA = Path(__file__).parent / "data"


@st.composite
def headers(draw):
    # both kinds over the whole range the reader takes: widths, depths and sides up to its
    # limits, small values as often as large ones (a header over a limit is another test's)
    kind = draw(st.sampled_from(["deep-decoder", "skip"]))
    arch = Architecture(kind, draw(st.one_of(st.integers(1, 16), st.integers(1, 1024))), draw(st.integers(1, 12)),
                        draw(st.sampled_from([1, 3])), folded=kind == "deep-decoder" and draw(st.booleans()),
                        margin=kind == "deep-decoder" and draw(st.booleans()))
    side = st.one_of(st.integers(1, 64), st.integers(1, bitstream.MAX_SIDE))
    width, height = draw(side), draw(side)
    assume(width * height <= bitstream.MAX_PIXELS and work(arch, height, width) <= bitstream.MAX_WORK)
    assume(macs(arch, height, width) <= bitstream.MAX_MACS)
    assume(sum(int(np.prod(s)) for _, s in tensor_shapes(arch)) <= bitstream.MAX_SYMBOLS)
    models, codes = [], []
    for _ in tensor_shapes(arch):
        lo = draw(st.integers(-40000, 40000))
        hi = lo + draw(st.integers(0, 60000))
        models.append(TensorModel(lo, hi, draw(st.integers(lo, hi)), int(draw(st.sampled_from(DECAYS)))))
        codes.append(draw(st.integers(STEP_CODE_MIN, STEP_CODE_MAX)))
    return bitstream.Header(width, height, arch,
                            draw(st.integers(0, 2**64 - 1)), tuple(codes), tuple(models),
                            draw(st.sampled_from([0, bitstream.FLAG_TRANSPOSED])))


@given(headers(), st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4]))
@settings(deadline=None, max_examples=80)
def test_container_round_trips_random_headers_and_payloads(header, payload):
    data = bitstream.pack(header, payload)
    h, p = bitstream.unpack(data)
    assert h == header and p == payload
    assert data[4] == (5 if header.arch.margin else 3 if header.arch.folded else 2)  # each version only where it is needed


_ANY_INT = st.one_of(st.integers(-3, 3), st.integers(-2**80, 2**80), st.sampled_from([2**70 - 1, 2**70]))


@pytest.mark.parametrize("n", [0, 127, 128, 2**64 - 1, 2**70 - 1])
def test_a_varint_the_reader_can_hold_reads_back_and_a_longer_one_is_refused_when_written(n):
    data = bitstream._uvarint(n)
    assert bitstream._Reader(data, 0, len(data)).uvarint("n") == n
    with pytest.raises(ConfigError):
        bitstream._uvarint(n + 2**70)  # past the reader's 10 bytes of 7 bits
    with returns_within(5), pytest.raises(ConfigError):  # the varint writer's own guard, which
        bitstream._uvarint(-n - 1)  # tiles.pack relies on too: -1 >> 7 is -1, never 0


@st.composite
def bent_headers(draw):
    """A valid header with one field, or one model's field, set to any integer."""
    h = draw(headers())
    field = draw(st.sampled_from(["width", "height", "seed", "flags", "model"]))
    if field != "model":
        return dataclasses.replace(h, **{field: draw(_ANY_INT)})
    i = draw(st.integers(0, len(h.models) - 1))
    m = dataclasses.replace(h.models[i], **{draw(st.sampled_from(["lo", "hi", "mu"])): draw(_ANY_INT)})
    return dataclasses.replace(h, models=h.models[:i] + (m,) + h.models[i + 1:])


def _readable(model) -> bool:
    try:
        model.validate()
    except CorruptError:
        return False
    return True


@given(bent_headers())
@settings(deadline=None, max_examples=150)
def test_the_writer_refuses_at_once_or_writes_what_the_reader_reads_back(header):
    # the writer never hangs on a value (a negative varint once looped until memory ran out)
    # nor makes a file that its own reader takes for a damaged one
    try:
        with returns_within(5):
            data = bitstream.pack(header, b"")
    except ConfigError:
        # refused: only a value the format has no room for (a size under 1 or past a varint's
        # 70 bits, a seed past 64 bits, an unknown flag, a model its reader would call
        # corrupt), never a storable one
        assert not (1 <= header.width < 2**70 and 1 <= header.height < 2**70 and 0 <= header.seed < 2**64
                    and header.flags >= 0 and not header.flags & ~bitstream._KNOWN_FLAGS
                    and all(_readable(m) for m in header.models)), header
        return
    a, w, h = header.arch, header.width, header.height
    within = (1 <= w <= bitstream.MAX_SIDE and 1 <= h <= bitstream.MAX_SIDE and w * h <= bitstream.MAX_PIXELS
              and work(a, h, w) <= bitstream.MAX_WORK and macs(a, h, w) <= bitstream.MAX_MACS)
    if within:
        assert bitstream.unpack(data) == (header, b"")
    else:  # a size past the reader's bounds: the encoder refuses those before its fit
        with pytest.raises(LimitError):
            bitstream.unpack(data)


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
        ddcodec.decode(ddc_bytes + b"\0")  # versions 2 and 3: the payload runs to the CRC, which fails
    # version 1 states its payload's length: a byte past it is caught even under a valid CRC
    v1 = (Path(__file__).parent / "data" / "golden-v1.ddc").read_bytes()
    body = v1[:-4] + b"\0"
    with pytest.raises(CorruptError, match="unexpected bytes after the payload"):
        ddcodec.decode(body + struct.pack("<I", zlib.crc32(body)))


@pytest.mark.parametrize("width,height", [(100_000, 1), (1, 100_000), (60_000, 60_000)])
def test_absurd_dimensions_are_refused_before_decoding(ddc_bytes, width, height):
    # at one block and k=1 the work and product bounds pass: only the size bounds refuse these
    h, payload = bitstream.unpack(ddc_bytes)
    arch = Architecture("deep-decoder", 1, 1, h.arch.out_channels, h.arch.folded)
    n = len(tensor_shapes(arch))
    huge = dataclasses.replace(h, width=width, height=height, arch=arch, step_codes=(0,) * n, models=(h.models[0],) * n)
    with pytest.raises(LimitError, match="image size"):
        ddcodec.decode(bitstream.pack(huge, payload))


def test_an_architecture_with_too_many_weights_is_refused_before_decoding(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    arch = Architecture("skip", 1024, 5, 3)  # ~140 M weights: more than MAX_SYMBOLS
    n = len(tensor_shapes(arch))
    big = dataclasses.replace(h, width=64, height=64, arch=arch, step_codes=(0,) * n,
                              models=(h.models[0],) * n)
    with pytest.raises(LimitError):
        bitstream.unpack(bitstream.pack(big, payload))


@pytest.mark.parametrize("kind,k,layers,w,h", [
    ("deep-decoder", 1024, 12, 1, 1),  # a 1x1 image that runs at 2048x2048 with 1024 channels
    ("deep-decoder", 4, 12, 65536, 1),  # one row, padded to 2048 rows
    ("skip", 1, 12, 1, 1),  # the skip net's input is padded to 4096x4096
])
def test_a_small_image_whose_padded_decode_is_huge_is_refused_unread(ddc_bytes, kind, k, layers, w, h):
    head, payload = bitstream.unpack(ddc_bytes)
    arch = Architecture(kind, k, layers, 3, folded=kind == "deep-decoder")
    n = len(tensor_shapes(arch))
    bad = dataclasses.replace(head, width=w, height=h, arch=arch, step_codes=(0,) * n,
                              models=(head.models[0],) * n)
    with pytest.raises(LimitError, match="reader's limits"):
        bitstream.unpack(bitstream.pack(bad, payload))


@pytest.mark.parametrize("kind,k,layers,h,w", [
    ("deep-decoder", 5, 3, 9, 13),  # padded to 12x16
    ("deep-decoder", 3, 1, 4, 6),  # no upsampling
    ("skip", 3, 2, 9, 13),  # padded to 12x16; each level's convs at its own resolution
])
def test_macs_are_the_products_torch_counts_in_the_forward(kind, k, layers, h, w):
    from torch.utils.flop_counter import FlopCounterMode
    from ddcodec.nets import seeded_input
    arch = Architecture(kind, k, layers, 3)
    net, z = build(arch), seeded_input(arch, h, w, 0)[None]
    with FlopCounterMode(display=False) as counter:
        net(z)
    assert 2 * macs(arch, h, w) == counter.get_total_flops()  # a multiply-add is two FLOPs


def test_a_header_whose_decode_takes_too_many_products_is_refused_unread(ddc_bytes):
    head, payload = bitstream.unpack(ddc_bytes)
    arch = Architecture("deep-decoder", 1024, 1, 3, folded=True)  # 512x512: 2^28 floats, 276 G products
    assert work(arch, 512, 512) <= bitstream.MAX_WORK and macs(arch, 512, 512) > bitstream.MAX_MACS
    n = len(tensor_shapes(arch))
    bad = dataclasses.replace(head, width=512, height=512, arch=arch, step_codes=(0,) * n,
                              models=(head.models[0],) * n)
    with pytest.raises(LimitError, match="reader's limits"):
        bitstream.unpack(bitstream.pack(bad, payload))
    h, _ = bitstream.unpack(ddc_bytes)
    with pytest.raises(LimitError):  # and the caller's own bound is applied
        ddcodec.decode(ddc_bytes, max_macs=macs(h.arch, h.height, h.width) - 1)
    assert ddcodec.decode(ddc_bytes, max_macs=macs(h.arch, h.height, h.width)).shape[:2] == (h.height, h.width)


def test_the_encoder_refuses_a_fit_whose_products_the_reader_would_refuse():
    img = np.zeros((512, 512, 3), np.uint8)
    with pytest.raises(ImageError, match="multiply-adds"):  # no margin: the canvas is the image
        ddcodec.encode(img, 1024, 1, ddcodec.FitConfig(iters=1, margin=False), device="cpu")


def test_a_decode_the_machine_cannot_hold_is_a_memory_error(ddc_bytes, monkeypatch):
    from ddcodec import exact

    def full(*args):  # what torch's CPU allocator raises
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 4294967296 bytes.")
    monkeypatch.setattr(exact, "render", full)
    with pytest.raises(MemoryError, match="more memory than cpu has"):
        ddcodec.decode(ddc_bytes)


def test_the_encoder_refuses_a_fit_whose_padded_size_the_reader_would_refuse():
    img = np.zeros((1, 1, 3), np.uint8)
    with pytest.raises(ImageError, match="padded"):
        ddcodec.encode(img, 128, 12, ddcodec.FitConfig(iters=1), device="cpu")  # 2^29 > 2^28


def _with_first_entry_byte(ddc_bytes, offset: int, value: int) -> bytes:
    """The file with byte `offset` of its first tensor entry set to value, CRC recomputed."""
    h, payload = bitstream.unpack(ddc_bytes)
    data = bytearray(bitstream.pack(h, payload))
    entries = sum(len(bitstream._tensor_entry(c, m)) for c, m in zip(h.step_codes, h.models))
    data[len(bitstream.pack(h, b"")) - 4 - entries + offset] = value
    return _with_crc(bytes(data[:-4]))


def test_step_code_out_of_range_is_corruption(ddc_bytes):
    with pytest.raises(CorruptError):  # byte 250 = code 50, above STEP_CODE_MAX
        ddcodec.decode(_with_first_entry_byte(ddc_bytes, 0, STEP_CODE_MAX + 10 - STEP_CODE_MIN))


def test_writer_refuses_a_step_code_the_reader_would_refuse(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    with pytest.raises(ConfigError):
        bitstream.pack(dataclasses.replace(h, step_codes=(STEP_CODE_MAX + 1,) + h.step_codes[1:]), payload)


@pytest.mark.parametrize("field", ["seed", "width"])
def test_writer_refuses_a_negative_unsigned_field_at_once(ddc_bytes, field):
    head, payload = bitstream.unpack(ddc_bytes)
    bad = dataclasses.replace(head, **{field: -7})
    with returns_within(5), pytest.raises(ConfigError, match="-7"):
        bitstream.pack(bad, payload)


def test_decay_index_off_the_grid_is_corruption(ddc_bytes):
    with pytest.raises(CorruptError):
        bitstream.unpack(_with_first_entry_byte(ddc_bytes, 1, 255))


def test_version_2_headers_are_smaller_than_version_1(ddc_bytes):
    """The reason for version 2: the same weights in fewer header bytes."""
    old = (DATA / "golden-v1.ddc").read_bytes()
    h, payload = bitstream.unpack(old)
    new = bitstream.pack(h, payload)
    assert new[4] == 2 and bitstream.unpack(new) == (h, payload)  # unfolded: no version-3 feature
    assert len(old) - len(new) >= 2 * len(h.models)


def test_empty_and_short_inputs_are_truncated():
    for data in (b"", b"\x89", b"\x89DDC", b"\x89DDC\x01"):
        with pytest.raises(TruncatedError):
            bitstream.unpack(data)


def test_info_reports_each_files_own_version():
    assert ddcodec.info((DATA / "golden-v1.ddc").read_bytes())["version"] == 1
    assert ddcodec.info((DATA / "golden-v2.ddc").read_bytes())["version"] == 2


def test_the_folded_kind_is_corruption_before_version_3(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    assert h.arch.folded  # what the encoder writes
    as_v2 = bytearray(ddc_bytes[:-4])
    as_v2[4] = 2
    as_v2 += struct.pack("<I", zlib.crc32(bytes(as_v2)))
    with pytest.raises(CorruptError, match="architecture 2"):
        bitstream.unpack(bytes(as_v2))


def test_the_margin_is_corruption_before_version_5_and_only_a_margin_writes_version_5(encoded_with_margin):
    ddc_bytes = encoded_with_margin.data
    h, payload = bitstream.unpack(ddc_bytes)
    assert h.arch.margin and ddc_bytes[4] == 5 and h.flags == 0  # in the architecture, not in header.flags
    as_v3 = bytearray(ddc_bytes[:-4])
    as_v3[4] = 3
    as_v3 += struct.pack("<I", zlib.crc32(bytes(as_v3)))
    with pytest.raises(CorruptError, match="unknown flags 2"):
        bitstream.unpack(bytes(as_v3))
    plain = dataclasses.replace(h, arch=dataclasses.replace(h.arch, margin=False))
    assert bitstream.pack(plain, payload)[4] == 3  # a version-3 reader still opens it
    assert bitstream.unpack(bitstream.pack(plain, payload))[0] == plain


def test_a_header_flag_cannot_smuggle_the_margin_past_the_architecture(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    with pytest.raises(ConfigError, match="flags"):  # the margin is the architecture's, not a flag to set
        bitstream.pack(dataclasses.replace(h, flags=bitstream.FLAG_MARGIN), payload)


def test_a_payload_of_part_of_a_word_is_corruption_to_info_as_to_decode(ddc_bytes):
    h, payload = bitstream.unpack(ddc_bytes)
    data = _with_crc(ddc_bytes[:-4] + b"\0\0")  # two bytes more: half a 32-bit word
    for read in (ddcodec.info, ddcodec.decode):
        with pytest.raises(CorruptError, match="multiple of 4"):
            read(data)
    with pytest.raises(ConfigError, match="32-bit words"):  # nor will the writer make one
        bitstream.pack(h, payload + b"\0\0")


def test_the_single_network_reader_names_a_tiled_file_as_such(ddc_bytes):
    from ddcodec import tiles
    h = ddcodec.info(ddc_bytes)
    with pytest.raises(UnsupportedVersionError, match="tiled"):
        ddcodec.load_model(tiles.pack(2 * h["width"], h["height"], 1, 2, [ddc_bytes] * 2))


def test_the_encoder_refuses_an_image_over_the_readers_pixel_limit_before_the_fit(monkeypatch):
    monkeypatch.setattr(bitstream, "MAX_PIXELS", 1000)
    monkeypatch.setattr(ddcodec.codec, "optimise", None)  # refused before any fit
    with pytest.raises(ImageError, match="1000 pixels"):
        ddcodec.encode(np.zeros((32, 32), np.uint8), 1, 1, ddcodec.FitConfig(iters=1), device="cpu")
