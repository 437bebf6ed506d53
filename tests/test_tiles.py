"""Tiled files (format version 4): the grid, the container, and encode/decode through it."""
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ddcodec
import ddcodec.rate
from ddcodec import bitstream, tiles
from ddcodec.entropy import DECAYS, TensorModel
from ddcodec.degrade import Degradation
from ddcodec.errors import ConfigError, CorruptError, FormatError, ImageError, LimitError
from ddcodec.nets import layers_for, macs, tensor_shapes
from ddcodec.metrics import psnr

from .conftest import FAST_FIT, FAST_QUANT, assert_decodes_like_the_fit, returns_within, small

FIT_TINY = ddcodec.FitConfig(iters=20)


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(64, 400), st.integers(64, 400))
@settings(deadline=None)
def test_tile_boxes_cover_every_pixel_once_with_sizes_within_one(height, width, tw, th):
    rows, cols = tiles.grid_shape(height, width, (tw, th))
    cover = np.zeros((height, width), np.int32)
    sizes = set()
    for top, bottom, left, right in tiles.boxes(height, width, rows, cols):
        cover[top:bottom, left:right] += 1
        sizes.add((bottom - top, right - left))
    assert (cover == 1).all()
    assert max(h for h, _ in sizes) - min(h for h, _ in sizes) <= 1
    assert max(w for _, w in sizes) - min(w for _, w in sizes) <= 1


def test_a_grid_the_reader_would_refuse_is_refused_before_the_fit():
    with pytest.raises(ConfigError):
        tiles.grid_shape(4096, 4096, (8, 8))


def test_portrait_images_take_the_tile_turned():
    assert tiles.grid_shape(512, 768, (192, 128)) == (4, 4)
    assert tiles.grid_shape(768, 512, (192, 128)) == (4, 4)  # 128 wide, 192 high
    assert tiles.grid_shape(100, 100, (192, 128)) == (1, 1)


@given(st.integers(1, 4), st.integers(1, 4))
@settings(deadline=None, max_examples=20)
def test_container_round_trips_its_members_in_order(tiled, rows, cols):
    four = tiles.unpack_members(tiled[1].data, 1 << 28)[4]  # four different tiles' files
    assert len(set(four)) == 4
    h = ddcodec.info(four[0])
    members = [four[(i * 3 + i // 4) % 4] for i in range(rows * cols)]  # no two neighbours alike
    data = tiles.pack(h["width"] * cols, h["height"] * rows, rows, cols, members)
    assert tiles.unpack_members(data, 1 << 28) == (h["width"] * cols, h["height"] * rows, rows, cols, members)


def _constant_member(width: int, height: int, value: int, seed: int) -> bytes:
    """A valid 1-channel, 1-block member whose tensors are all `value`: no payload, cheap to decode."""
    arch = ddcodec.Architecture("deep-decoder", 1, 1, 3, folded=True)
    n = len(tensor_shapes(arch))
    model = TensorModel(value, value, value, int(DECAYS[0]))
    return bitstream.pack(bitstream.Header(width, height, arch, seed, (0,) * n, (model,) * n), b"")


@given(st.integers(1, 40), st.integers(1, 40), st.data())
@settings(deadline=None, max_examples=40)
def test_uneven_grids_round_trip_and_decode_tile_by_tile(height, width, data):
    rows, cols = data.draw(st.integers(1, min(height, 5))), data.draw(st.integers(1, min(width, 5)))
    boxes = tiles.boxes(height, width, rows, cols)
    members = [_constant_member(right - left, bottom - top, 3 * i - 7, i) for i, (top, bottom, left, right) in enumerate(boxes)]
    packed = tiles.pack(width, height, rows, cols, members)
    assert tiles.unpack_members(packed, 1 << 28) == (width, height, rows, cols, members)
    out = ddcodec.decode(packed)
    assert out.shape == (height, width, 3)
    for m, (top, bottom, left, right) in zip(members, boxes):
        np.testing.assert_array_equal(out[top:bottom, left:right], ddcodec.decode(m))


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_member_that_does_not_fit_its_place_is_corruption(ddc_bytes, monkeypatch):
    h = ddcodec.info(ddc_bytes)
    grid = (h["width"] * 2 + 1, h["height"], 1, 2, [ddc_bytes] * 2)
    with pytest.raises(ConfigError, match="its place in the grid"):  # the writer will not make it
        tiles.pack(*grid)
    monkeypatch.setattr(tiles, "_check_packable", lambda *a: None)  # a hostile writer's file
    data = tiles.pack(*grid)
    for read in (ddcodec.info, ddcodec.decode):  # from the headers, before any member is decoded
        with pytest.raises(CorruptError, match="its place"):
            read(data)


def test_the_tiles_of_a_file_share_one_budget_of_products(ddc_bytes):
    h = ddcodec.info(ddc_bytes)
    head, _ = ddcodec.bitstream.unpack(ddc_bytes)
    one = macs(head.arch, head.height, head.width)
    data = tiles.pack(h["width"] * 3, h["height"], 1, 3, [ddc_bytes] * 3)
    with pytest.raises(LimitError, match="tiles 0..2"):  # each tile alone is within the bound
        ddcodec.decode(data, max_macs=3 * one - 1)
    assert ddcodec.decode(data, max_macs=3 * one).shape[:2] == (h["height"], 3 * h["width"])


def test_the_encoder_refuses_tiles_whose_products_together_the_reader_would_refuse(monkeypatch):
    one = macs(ddcodec.Architecture("deep-decoder", 6, layers_for(6, 32, 48), 3), 32, 48)  # the blocks a tile gets
    monkeypatch.setattr(ddcodec.bitstream, "MAX_MACS", 3 * one)  # one tile passes, four do not
    monkeypatch.setattr(ddcodec.codec, "fit_bank", None)  # refused before any fit
    with pytest.raises(ImageError, match="tiles together"):
        ddcodec.encode(small(96, 64), channels=6, fit=FAST_FIT, quant=FAST_QUANT, device="cpu", tile=(48, 32))


def test_a_tiled_member_inside_a_tiled_file_is_corruption(ddc_bytes, monkeypatch):
    h = ddcodec.info(ddc_bytes)
    inner = tiles.pack(h["width"], h["height"], 1, 1, [ddc_bytes])
    with pytest.raises(ConfigError, match="not a version-2, -3 or -5"):  # the writer will not make it
        tiles.pack(h["width"], h["height"], 1, 1, [inner])
    monkeypatch.setattr(tiles, "_check_packable", lambda *a: None)  # a hostile writer's file
    with pytest.raises(CorruptError):
        ddcodec.decode(tiles.pack(h["width"], h["height"], 1, 1, [inner]))


def test_tiles_of_different_channels_are_refused_by_the_writer_and_corrupt_to_the_reader(monkeypatch):
    rgb, grey = (ddcodec.encode(small(16, 16, mode), 4, 3, ddcodec.FitConfig(iters=5), ddcodec.QuantConfig(qat_iters=0),
                                device="cpu").data for mode in ("RGB", "L"))
    with pytest.raises(ConfigError, match="share its channels"):
        tiles.pack(32, 16, 1, 2, [rgb, grey])
    monkeypatch.setattr(tiles, "_check_packable", lambda *a: None)  # a hostile writer's file
    data = tiles.pack(32, 16, 1, 2, [rgb, grey])
    with pytest.raises(CorruptError, match="tile 1 has 1 channels, tile 0 3"):
        ddcodec.info(data)  # the header alone tells: no member decoded first
    with pytest.raises(CorruptError, match="tile 1 has 1 channels"):
        ddcodec.decode(data)


@pytest.mark.parametrize("width,height,rows,cols,members,why", [
    (-16, 16, 1, 1, 1, "image size"), (0, 16, 1, 1, 1, "image size"), (16, 16, 0, 1, 1, "bad tile grid"),
    (16, 16, 1, 17, 17, "bad tile grid"), (16, 16, 2, 1, 1, "1 tiles for a 1x2 grid")])
def test_the_tiled_writer_refuses_a_grid_its_reader_would_call_corrupt(ddc_bytes, width, height, rows, cols,
                                                                      members, why):
    # as many members as the grid has places, so that the grid's own bound is what refuses it;
    # (16, 16, 2, 1): two tiles asked for, one given; a negative size once looped in the varint writer
    with pytest.raises(ConfigError, match=why):
        tiles.pack(width, height, rows, cols, [ddc_bytes] * members)


@pytest.fixture(scope="module")
def tiled():
    img = small(96, 64)
    res = ddcodec.encode(img, channels=6, fit=FAST_FIT, quant=FAST_QUANT, device="cpu", tile=(48, 32))
    return img, res


def test_tiled_encode_writes_a_grid_that_decodes_to_its_reported_psnr(tiled):
    img, res = tiled
    assert res.data[4] == tiles.VERSION
    out = ddcodec.decode(res.data)
    assert_decodes_like_the_fit(out, img, res)  # its float PSNR is the tiles' fits', not the decoder's
    assert res.psnr == pytest.approx(psnr(out, img))
    assert res.bpp == 8 * len(res.data) / (96 * 64)
    meta = ddcodec.info(res.data)
    assert meta["tiles"] == [2, 2] and meta["tile_k"] == [6] * 4 and meta["params"] == res.params


def test_tiled_decode_is_its_members_decodes_put_side_by_side(tiled):
    _, res = tiled
    width, height, rows, cols, members = tiles.unpack_members(res.data, 1 << 28)
    out = ddcodec.decode(res.data)
    for m, (top, bottom, left, right) in zip(members, tiles.boxes(height, width, rows, cols)):
        np.testing.assert_array_equal(out[top:bottom, left:right], ddcodec.decode(m))


def test_every_truncation_of_a_tiled_file_raises_a_typed_error(tiled):
    data = tiled[1].data
    for n in range(len(data)):
        with pytest.raises(FormatError):
            ddcodec.decode(data[:n])


@given(st.data())
@settings(deadline=None, max_examples=60)
def test_random_byte_flips_in_a_tiled_file_raise_a_typed_error(tiled, data):
    buf = bytearray(tiled[1].data)
    for pos in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=3, unique=True)):
        buf[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FormatError):
        ddcodec.decode(bytes(buf))


def test_a_grid_of_one_tile_writes_a_plain_file():
    img = small(48, 32)
    res = ddcodec.encode(img, channels=4, fit=FIT_TINY, quant=FAST_QUANT, device="cpu", tile=(48, 32))
    assert res.data[4] == 3 and ddcodec.decode(res.data).shape == img.shape  # k=4: no margin


def test_tiles_with_a_rate_target_keep_to_it_and_give_the_detailed_tile_the_wider_network():
    img = small(192, 64)
    img[:, :96] = 128  # the left tile is flat, the right one a photo
    res = ddcodec.encode(img, channels=None, fit=ddcodec.FitConfig(iters=60),
                         quant=ddcodec.QuantConfig(target_bpp=1.0, qat_iters=5), device="cpu", tile=(96, 64))
    assert res.bpp <= 1.0
    k_flat, k_photo = ddcodec.info(res.data)["tile_k"]
    assert k_photo > k_flat


@given(st.lists(st.floats(1e-8, 1.0), min_size=1, max_size=20), st.data())
def test_allocation_keeps_the_mean_rate_and_ranks_tiles_by_their_error(mse, data):
    pixels = np.array(data.draw(st.lists(st.integers(100_000, 400_000), min_size=len(mse), max_size=len(mse))))
    bpp = data.draw(st.floats(0.1, 4.0))  # every tile's floor (200 bytes) is below a fifth of its share
    shares = tiles.allocate(mse, pixels, bpp)
    assert np.average(shares, weights=pixels) <= bpp * (1 + 1e-6)
    if max(mse) / min(mse) < 20 ** (1 + tiles.GAMMA) / 2:  # inside the clip range: the whole target is used
        assert np.average(shares, weights=pixels) == pytest.approx(bpp, rel=1e-6)
    order = np.lexsort((pixels, mse))
    assert (np.diff(shares[order]) >= -1e-9 * bpp).all()  # more error, never less rate
    assert (shares >= bpp * tiles.SHARE_RANGE[0] * (1 - 1e-9)).all()
    assert (shares <= bpp * tiles.SHARE_RANGE[1] * (1 + 1e-9)).all()
    assert (shares * pixels / 8 >= tiles.FLOOR_BYTES * (1 - 1e-9)).all()


def test_tiles_refuse_restoration():
    with pytest.raises(ConfigError):
        ddcodec.encode(small(96, 64), channels=4, device="cpu", tile=(48, 32), degradation=Degradation(scale=2))


def test_fits_for_counts_one_bank_per_tile_size_up_to_transposition():
    assert tiles.fits_for([(512, 768, 3), (768, 512, 3)], (192, 128)) == 1  # 128x192 tiles, turned
    assert tiles.fits_for([(65, 97, 3)], (48, 32)) == 4  # 32/33 rows x 48/49 columns
    assert tiles.fits_for([(64, 96), (64, 96, 3)], (48, 32)) == 2  # grey and colour never share


def test_the_auto_tile_grows_with_the_image_and_at_low_rates():
    assert tiles.grid_shape(128, 192, tiles.auto_tile(0.5, 128, 192)) == (1, 1)  # kodak-mini: one network
    assert tiles.grid_shape(256, 384, tiles.auto_tile(0.5, 256, 384)) == (2, 2)
    assert tiles.grid_shape(512, 768, tiles.auto_tile(0.5, 512, 768)) == (3, 3)
    assert tiles.grid_shape(256, 384, tiles.auto_tile(0.1, 256, 384)) == (1, 1)  # 1,500 bytes a tile
    for bpp in (0.05, 0.1, 0.3, 1.0):
        w, h = tiles.auto_tile(bpp, 512, 768)
        assert w * h * bpp / 8 >= tiles.MIN_TILE_BYTES * 0.99


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 4096), st.floats(0.02, 8.0))
def test_every_auto_tile_holds_most_of_its_bytes_inside_the_image(height, width, bpp):
    """The auto grid of any shape, strips included, is one network or tiles of at least half
    MIN_TILE_BYTES each (grid_shape's rounding may shrink a tile to 0.75 of its size per side),
    so the tile floor never refuses a rate the auto grid was chosen for."""
    rows, cols = tiles.grid_shape(height, width, tiles.auto_tile(bpp, height, width))
    budget = bpp * height * width / 8
    assert rows * cols == 1 or budget / (rows * cols) >= tiles.MIN_TILE_BYTES / 2
    tiles.check_rate(bpp, height, width, rows, cols)


def test_a_strip_one_network_can_keep_gets_one_tile():
    # 1025x9 at 0.3 bpp is 346 bytes: the nominal 313x209 tile gave three tiles of 115 bytes,
    # under the 200-byte floor, and the encode was refused
    assert tiles.grid_shape(9, 1025, tiles.auto_tile(0.3, 9, 1025)) == (1, 1)
    assert tiles.grid_shape(1025, 9, tiles.auto_tile(0.3, 1025, 9)) == (1, 1)
    assert tiles.grid_shape(9, 1025, tiles.auto_tile(2.0, 9, 1025)) == (1, 2)  # 1,153 bytes each


def test_a_grid_of_one_tile_runs_no_pilot(monkeypatch):
    stages = []
    ddcodec.encode(small(48, 32), channels=None, fit=FIT_TINY, quant=ddcodec.QuantConfig(target_bpp=2.0, qat_iters=2),
                   device="cpu", tile=(48, 32), progress=lambda stage, *a: stages.append(stage))
    assert "pilot" not in stages and "fit" in stages


def test_a_rate_target_the_grid_cannot_keep_is_refused_before_the_fit():
    img = np.zeros((24, 32, 3), np.uint8)  # 4 bpp = 384 bytes, under 4 tiles x FLOOR_BYTES
    stages = []
    with pytest.raises(ConfigError, match="tiles need"):
        ddcodec.encode(img, None, 3, ddcodec.FitConfig(iters=5), ddcodec.QuantConfig(target_bpp=4.0),
                       device="cpu", tile=(16, 12), progress=lambda stage, *a: stages.append(stage))
    assert stages == []  # no pilot, no fit


def test_a_grid_of_one_tile_keeps_a_target_under_the_tile_floor():
    # 1 bpp is 192 bytes at 48x32, under FLOOR_BYTES; one tile is a plain file, which keeps to it
    img = small(48, 32)
    res = ddcodec.encode(img, None, fit=FIT_TINY, quant=ddcodec.QuantConfig(target_bpp=1.0, qat_iters=2),
                         device="cpu", tile=(48, 32))
    assert res.data[4] != ddcodec.tiles.VERSION and len(res.data) <= 192


@given(st.integers(1, 60), st.integers(1, 60), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.integers(0, 2**16))
def test_merge_puts_split_tiles_back_into_the_same_image(height, width, rows, cols, grey, seed):
    rows, cols = min(rows, height), min(cols, width)  # every tile at least a pixel
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width) if grey else (height, width, 3), dtype=np.uint8)
    parts = [p.copy() for p in tiles.split(img, rows, cols)]
    assert len(parts) == rows * cols
    assert np.array_equal(tiles.merge(parts, height, width, rows, cols), img)
    if rows * cols > 1:  # a tile out of place, or one short, is corruption, not a wrong image
        with pytest.raises(CorruptError):
            tiles.merge(parts[:-1], height, width, rows, cols)
        wrong = [p[:, :-1] if p.shape[1] > 1 else np.zeros((p.shape[0], 2) + p.shape[2:], np.uint8) for p in parts]
        with pytest.raises(CorruptError):
            tiles.merge(wrong, height, width, rows, cols)


def _member(k: int, layers: int, width: int = 1, height: int = 1, kind: str = "deep-decoder") -> bytes:
    """A valid member of all-zero tensors (no payload): cheap to read, however costly to decode."""
    arch = ddcodec.Architecture(kind, k, layers, 1, folded=kind == "deep-decoder")
    n = len(tensor_shapes(arch))
    return bitstream.pack(bitstream.Header(width, height, arch, 0, (0,) * n, (TensorModel(0, 0, 0, int(DECAYS[0])),) * n), b"")


def _hostile(monkeypatch, n: int, member: bytes) -> bytes:
    """An n x n grid of one-pixel tiles, all `member`, packed by a writer that checks nothing."""
    monkeypatch.setattr(tiles, "_check_packable", lambda *a: None)
    return tiles.pack(n, n, n, n, [member] * (n * n))


def test_the_tiles_of_a_file_share_one_budget_of_padded_work(monkeypatch):
    # one pixel at 12 blocks runs at 2048x2048: ~1 s to decode a member, however small its file
    member = _member(2, 12)
    head, _ = bitstream.unpack(member)
    one = ddcodec.nets.work(head.arch, 1, 1)
    assert 17 * 17 * one > tiles.TILED_WORK_FILES * bitstream.MAX_WORK >= 16 * 16 * one
    with pytest.raises(ConfigError, match="k\\*pixels"):  # the writer will not make it
        tiles.pack(17, 17, 17, 17, [member] * 17 * 17)
    data = _hostile(monkeypatch, 3, member)
    assert tiles.unpack_members(data, 2 * one)[2:4] == (3, 3)  # 9 members' work within 8 x 2 members'
    with returns_within(10), pytest.raises(LimitError, match="tiles 0..8 .*k\\*pixels"):
        ddcodec.decode(data, max_work=one)  # each member alone within its bound, 9 > 8 together


def test_the_tiles_of_a_file_share_one_budget_of_weights(monkeypatch):
    member = _member(64, 3)
    weights = bitstream.unpack(member)[0].symbols
    monkeypatch.setattr(tiles, "MAX_SYMBOLS", 8 * weights)  # as if each member were 1/8 of a file's weights
    with pytest.raises(ConfigError, match="weights"):
        tiles.pack(3, 3, 3, 3, [member] * 9)
    with returns_within(10), pytest.raises(LimitError, match="tiles 0..8 .*weights"):
        ddcodec.decode(_hostile(monkeypatch, 3, member))


def test_a_skip_net_is_no_tile():
    member = _member(2, 1, kind="skip")
    with pytest.raises(ConfigError, match="skip"):
        tiles.pack(1, 1, 1, 1, [member])


def test_a_skip_net_member_is_corruption(monkeypatch):
    with pytest.raises(CorruptError, match="skip"):
        ddcodec.decode(_hostile(monkeypatch, 1, _member(2, 1, kind="skip")))


def test_the_encoder_refuses_tiles_whose_work_together_the_reader_would_refuse(monkeypatch):
    one = ddcodec.nets.work(ddcodec.Architecture("deep-decoder", 6, 6, 3), 32, 48)
    monkeypatch.setattr(ddcodec.bitstream, "MAX_WORK", one)  # one tile passes, 4 x 6 of them not
    monkeypatch.setattr(ddcodec.codec, "fit_bank", None)  # refused before any fit
    with pytest.raises(ImageError, match="tiles together .*k\\*pixels"):
        ddcodec.encode(small(288, 128), channels=6, fit=FAST_FIT, quant=FAST_QUANT, device="cpu", tile=(48, 32))


def test_an_image_over_the_containers_pixel_limit_is_refused_before_the_pilot(monkeypatch):
    monkeypatch.setattr(tiles, "MAX_PIXELS", 1000)
    monkeypatch.setattr(ddcodec.codec, "fit_bank", None)
    with pytest.raises(ImageError, match="cannot be stored"):
        ddcodec.encode(small(48, 32), fit=FAST_FIT, quant=ddcodec.QuantConfig(target_bpp=1.0), device="cpu",
                       channels=None, tile=(16, 16))


@given(st.integers(1, 300), st.integers(1, 300), st.data())
@settings(deadline=None, max_examples=30)
def test_a_tiled_file_is_no_larger_than_its_members_and_the_container_excess(height, width, data):
    # the rate allocation leaves the container this room, so that a file of two tiles at their
    # shares keeps to the image's target
    rows, cols = data.draw(st.integers(1, min(height, 4))), data.draw(st.integers(1, min(width, 4)))
    members = [_constant_member(right - left, bottom - top, 1, i)
               for i, (top, bottom, left, right) in enumerate(tiles.boxes(height, width, rows, cols))]
    packed = tiles.pack(width, height, rows, cols, members)
    assert len(packed) <= sum(map(len, members)) + tiles.container_excess(width, height, rows, cols)
