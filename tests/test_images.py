import io
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

import ddcodec
from ddcodec.errors import ImageError, OutputError, OutputExistsError
from ddcodec.images import channels_of_mode, check_outputs, image_bytes, png_bytes, read_image, write_atomic

from .conftest import small


def _save(tmp_path, im, name="x.png", **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def test_palette_image_reads_as_its_exact_rgb_values(tmp_path):
    rgb = Image.fromarray(small(20, 10))
    pal = rgb.quantize(16)
    got = read_image(_save(tmp_path, pal))
    assert np.array_equal(got, np.asarray(pal.convert("RGB")))


def test_opaque_alpha_is_dropped_and_transparency_is_refused(tmp_path):
    rgba = Image.fromarray(small(20, 10)).convert("RGBA")
    assert np.array_equal(read_image(_save(tmp_path, rgba)), small(20, 10))
    a = np.asarray(rgba).copy()
    a[0, 0, 3] = 10
    with pytest.raises(ImageError, match="transparency"):
        read_image(_save(tmp_path, Image.fromarray(a), "t.png"))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_counts_as_transparency_only_where_a_pixel_has_it(tmp_path, mode):
    im = Image.fromarray(small(20, 10)).convert(mode)
    key = im.getpixel((0, 0))
    with pytest.raises(ImageError, match="transparency"):  # pixel (0, 0) has the key colour
        read_image(_save(tmp_path, im, "k.png", transparency=key))
    a = np.asarray(im)
    present = {tuple(v) for v in a.reshape(-1, 3)} if mode == "RGB" else set(a.ravel().tolist())
    absent = next(c for c in ([(i, 1, 254) for i in range(256)] if mode == "RGB" else range(256)) if c not in present)
    assert np.array_equal(read_image(_save(tmp_path, im, "n.png", transparency=absent)), np.asarray(im))


def test_a_bilevel_image_with_a_colour_key_is_refused_where_a_pixel_has_it(tmp_path):
    bits = np.arange(64).reshape(8, 8) % 3 == 0  # black and white pixels both
    with pytest.raises(ImageError, match="transparency"):
        read_image(_save(tmp_path, Image.fromarray(bits), "k.png", transparency=0))
    white = Image.fromarray(np.ones((8, 8), bool))  # no pixel has the key: nothing is transparent
    assert np.array_equal(read_image(_save(tmp_path, white, "n.png", transparency=0)), np.full((8, 8), 255, np.uint8))


@pytest.mark.parametrize("im", [
    Image.fromarray(np.zeros((8, 8), np.uint16) + 300),  # 16-bit
    Image.new("CMYK", (8, 8)),
    Image.new("F", (8, 8)),
])
def test_16bit_cmyk_and_float_images_are_refused(tmp_path, im):
    with pytest.raises(ImageError, match="unsupported image mode"):
        read_image(_save(tmp_path, im, "x.tiff"))


def test_exif_orientation_is_applied(tmp_path):
    img = small(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = _save(tmp_path, Image.fromarray(img), "r.png", exif=exif)  # lossless: the pixels must match
    got = read_image(p)
    assert np.array_equal(got, np.rot90(img, -1))  # turned clockwise, not the other way or flipped
    jpeg = read_image(_save(tmp_path, Image.fromarray(img), "r.jpg", exif=exif, quality=95)).astype(int)
    err = lambda ref: np.abs(jpeg - ref).mean()  # noqa: E731  (JPEG is lossy: nearest, not equal)
    assert jpeg.shape == (30, 10, 3) and err(got) < err(np.rot90(img, 1)) / 2 and err(got) < err(got[::-1]) / 2


def test_truncated_png_and_jpeg_are_refused(tmp_path):
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(small(64, 64)).save(buf, format=fmt)
        p = tmp_path / f"cut.{fmt.lower()}"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        with pytest.raises(ImageError):
            read_image(p)


def test_bilevel_image_reads_as_0_and_255(tmp_path):
    im = Image.fromarray(small(16, 16, "L")).convert("1")
    got = read_image(_save(tmp_path, im))
    assert got.ndim == 2 and np.array_equal(got, np.asarray(im.convert("L")))  # each pixel 0 or 255 as it was
    assert set(np.unique(got)) == {0, 255}


def test_pixel_limit_is_enforced(tmp_path):
    p = _save(tmp_path, Image.fromarray(small(20, 10)))
    with pytest.raises(ImageError, match="limit"):
        read_image(p, max_pixels=100)


def test_write_atomic_refuses_existing_and_replaces_only_with_force(tmp_path):
    p = tmp_path / "out.bin"
    write_atomic(p, b"one")
    with pytest.raises(OutputExistsError):
        write_atomic(p, b"two")
    assert p.read_bytes() == b"one"
    write_atomic(p, b"two", force=True)
    assert p.read_bytes() == b"two"
    assert [q.name for q in tmp_path.iterdir()] == ["out.bin"]


def test_a_write_that_fails_midway_is_a_typed_error_and_leaves_no_temp_and_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "out.bin"
    write_atomic(p, b"one")

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)  # after the temp file is made and written
    with pytest.raises(OutputError, match="No space"):
        write_atomic(p, b"two", force=True)
    with pytest.raises(OutputError, match="No space"):
        write_atomic(tmp_path / "new.bin", b"two")
    assert [q.name for q in tmp_path.iterdir()] == ["out.bin"] and p.read_bytes() == b"one"


def test_path_and_pil_inputs_give_the_same_file(tmp_path):
    img = small(16, 16)
    p = _save(tmp_path, Image.fromarray(img))
    kw = dict(channels=4, layers=3, fit=ddcodec.FitConfig(iters=10),
              quant=ddcodec.QuantConfig(qat_iters=2), device="cpu")
    a = ddcodec.encode(p, **kw).data
    assert a == ddcodec.encode(Image.fromarray(img), **kw).data == ddcodec.encode(img, **kw).data


def test_palette_with_alpha_keeps_its_colours():
    from ddcodec.images import from_pil
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, :2] = (200, 30, 10)
    pa = Image.fromarray(rgb).convert("P").convert("PA")  # palette colours + an opaque alpha
    out = from_pil(pa)
    expect = pa.convert("RGBA").getpixel((0, 0))[:3]  # the palette's colour (not gray)
    assert out.shape == (4, 4, 3) and tuple(int(v) for v in out[0, 0]) == expect
    assert len(set(expect)) > 1


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA"])
def test_the_header_predicts_the_channels_the_read_gives(tmp_path, mode):
    # collection.probe plans banks from headers; it must agree with the full read
    from ddcodec.collection import probe
    from ddcodec.images import from_pil
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 4), np.uint8))
    rgba.putalpha(255)  # opaque: every mode is readable
    im = rgba.convert(mode) if mode not in ("P", "PA") else rgba.convert("RGB").convert("P")
    if mode == "PA":
        im = im.convert("PA")  # no file format writes PA: check the conversion itself
        assert channels_of_mode("PA") == (1 if from_pil(im).ndim == 2 else 3)
        return
    path = tmp_path / "x.png"
    im.save(path)
    arr = read_image(path)
    assert channels_of_mode(im.mode) == (1 if arr.ndim == 2 else 3)
    assert probe(path) == ddcodec.codec.bank_key(arr.shape)


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo"])
def test_force_never_replaces_a_link_or_special_file(tmp_path, kind):
    target, p = tmp_path / "target.bin", tmp_path / "out.bin"
    target.write_bytes(b"keep")
    if kind == "symlink":
        p.symlink_to(target)
    elif kind == "dangling":
        p.symlink_to(tmp_path / "nowhere")
    else:
        os.mkfifo(p)
    with pytest.raises(OutputError, match="not a regular file"):
        write_atomic(p, b"new", force=True)
    assert target.read_bytes() == b"keep"
    assert p.is_symlink() or stat.S_ISFIFO(p.lstat().st_mode)


@given(st.sampled_from([0o022, 0o077, 0o002, 0o027]))
@settings(max_examples=4, deadline=None)
def test_a_new_output_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(umask):
    with tempfile.TemporaryDirectory() as d:
        p, old = Path(d) / "out.bin", os.umask(umask)
        try:
            write_atomic(p, b"one")
        finally:
            os.umask(old)
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
        p.chmod(0o640)
        write_atomic(p, b"two", force=True)
        assert stat.S_IMODE(p.stat().st_mode) == 0o640 and p.read_bytes() == b"two"


def test_check_outputs_refuses_two_names_for_one_file_and_an_empty_name(tmp_path):
    with pytest.raises(OutputExistsError, match="two outputs"):
        check_outputs([tmp_path / "a.png", tmp_path / "." / "a.png"])
    with pytest.raises(OutputError, match="not a file name"):
        check_outputs([Path("")])
    with pytest.raises(OutputError, match="no folder"):
        check_outputs([tmp_path / "missing" / "a.png"])


@pytest.mark.parametrize("suffix", [".psd", ".xbm", ".blp", ".mpg"])
def test_a_suffix_pillow_reads_but_cannot_write_this_image_as_is_an_output_error(tmp_path, suffix):
    from ddcodec.images import check_image_name, image_bytes
    out = tmp_path / f"x{suffix}"
    with pytest.raises(OutputError):  # the check the CLI makes before a fit, knowing the image
        check_image_name(out, 3, (8, 8))
    with pytest.raises(OutputError):  # and the writer itself
        image_bytes(small(8, 8), out)
    if suffix in (".psd", ".mpg"):  # Pillow writes neither at all: the name alone is refused
        with pytest.raises(OutputError):
            check_image_name(out)


@given(st.sampled_from([".png", ".bmp", ".tif", ".ppm", ".tga"]), st.integers(1, 24), st.integers(1, 24),
       st.booleans(), st.integers(0, 2**32 - 1))
@settings(deadline=None, max_examples=60)
def test_lossless_image_bytes_read_back_as_the_same_array(suffix, h, w, gray, seed):
    # the path decode_file writes (image_bytes) and the one encode reads (read_image) agree
    img = np.random.default_rng(seed).integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{suffix}"
        p.write_bytes(image_bytes(img, p))
        got = read_image(p)
    assert got.dtype == np.uint8 and np.array_equal(got, img)


def _serve_fifo(path, data: bytes):
    """A writer thread for a named pipe: writes data (as much as the reader takes) and closes."""
    import threading

    def serve():
        try:
            with open(path, "wb") as f:
                f.write(data)
        except BrokenPipeError:
            pass  # the reader stopped early, as it should past its limit
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_an_image_through_a_pipe_is_read_and_the_pipe_closed(tmp_path):
    import gc
    import warnings
    img = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    p = tmp_path / "pipe"
    os.mkfifo(p)
    writer = _serve_fifo(p, png_bytes(img))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_image(p)
        gc.collect()  # an unclosed handle warns when it is collected
    writer.join(5)
    np.testing.assert_array_equal(out, img)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_pipe_longer_than_any_image_is_refused_at_the_limit(tmp_path, monkeypatch):
    import ddcodec.images
    monkeypatch.setattr(ddcodec.images, "MAX_STREAM_BYTES", 1000)
    p = tmp_path / "pipe"
    os.mkfifo(p)
    writer = _serve_fifo(p, png_bytes(np.zeros((64, 64, 3), np.uint8)) + bytes(200_000))
    with pytest.raises(ImageError, match="more than 1000 bytes"):
        read_image(p)
    writer.join(5)
    assert not writer.is_alive()


def _png16(path, colour_type: int, channels: int, size=(8, 6)):
    """A 16-bit PNG written chunk by chunk: Pillow opens RGB, RGBA and gray+alpha ones in 8-bit
    modes (and cannot write them)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    w, h = size
    rows = b"".join(b"\0" + np.full(w * channels, 65535, ">u2").tobytes() for _ in range(h))  # opaque
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (6, 4), (4, 2), (0, 1)])
def test_a_16_bit_png_of_any_colour_type_is_refused_not_cut_to_8_bits(tmp_path, colour_type, channels):
    p = _png16(tmp_path / "deep.png", colour_type, channels)
    with pytest.raises(ImageError, match=r"more than 8 bits \(\w+;16B\)|mode I;16 \(16-bit"):
        read_image(p)


@pytest.mark.parametrize("suffix", [".gif", ".png", ".tiff", ".webp"])
def test_an_image_of_several_frames_is_refused_and_one_frame_is_read(tmp_path, suffix):
    frames = [Image.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in (0, 255)]
    p = tmp_path / f"anim{suffix}"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="2 frames"):
        read_image(p)
    frames[1].save(tmp_path / f"still{suffix}")
    assert read_image(tmp_path / f"still{suffix}").shape[:2] == (6, 8)


@pytest.mark.parametrize("channels, suffix", [(3, ".wmf"), (3, ".xbm"), (1, ".grib")])
def test_an_image_name_whose_writer_fails_is_refused_when_checked(tmp_path, channels, suffix):
    from ddcodec.images import check_image_name
    check_image_name(tmp_path / f"x{suffix}")  # the suffix alone names a writer
    with pytest.raises(OutputError, match="cannot write"):
        check_image_name(tmp_path / f"x{suffix}", channels)
    assert check_image_name(tmp_path / "x.webp", channels) == tmp_path / "x.webp"


def test_a_16_bit_bmp_of_5_6_5_bit_samples_is_read(tmp_path):
    import struct
    w, h = 16, 8
    pixels = np.random.default_rng(0).integers(0, 65536, (h, w), dtype=np.uint16).astype("<u2").tobytes()
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(pixels), 2835, 2835, 0, 0)  # BI_BITFIELDS
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    off = 14 + len(dib) + len(masks)
    (tmp_path / "565.bmp").write_bytes(b"BM" + struct.pack("<IHHI", off + len(pixels), 0, 0, off) + dib + masks + pixels)
    with Image.open(tmp_path / "565.bmp") as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "565.bmp"), expected)


def test_a_jpeg_with_a_second_picture_reads_as_its_first(tmp_path):
    main, preview = (Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (40, 200))
    main.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[preview])
    assert read_image(tmp_path / "photo.jpg").shape == (16, 24, 3)


def test_a_tiff_whose_next_frame_pointer_is_damaged_reads_its_first_frame(tmp_path):
    import struct
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "a.tif")
    d = bytearray((tmp_path / "a.tif").read_bytes())
    ifd = struct.unpack("<I", d[4:8])[0]
    nxt = ifd + 2 + 12 * struct.unpack("<H", d[ifd:ifd + 2])[0]
    d[nxt:nxt + 4] = struct.pack("<I", 20)  # into the pixels: no IFD there
    (tmp_path / "a.tif").write_bytes(bytes(d))
    assert read_image(tmp_path / "a.tif").shape == (16, 16, 3)


def test_an_opened_image_of_several_frames_is_refused_by_encode_as_its_file_is(tmp_path):
    frames = [Image.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "anim.gif") as im, pytest.raises(ImageError, match="2 frames"):
        ddcodec.encode(im, 4, 2, ddcodec.FitConfig(iters=2), device="cpu")


def test_a_folder_given_to_the_file_functions_is_called_a_folder(tmp_path):
    (tmp_path / "d.ddc").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        ddcodec.decode_file(tmp_path / "d.ddc")


def test_an_output_format_that_would_change_the_pixels_is_refused():
    rng = np.random.default_rng(0)
    many = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # ~1,000 colours: GIF keeps 256
    with pytest.raises(OutputError, match="change this image's pixels"):
        image_bytes(many, Path("x.gif"))
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)  # 256 greys: a GIF holds them exactly
    back = np.asarray(Image.open(io.BytesIO(image_bytes(grey, Path("x.gif")))).convert("L"))
    assert np.array_equal(back, grey)
    assert image_bytes(many, Path("x.jpg"))  # lossy by name: the user's choice, not checked


@pytest.mark.parametrize("which", ["encode", "decode"])
def test_a_library_output_name_ending_in_a_separator_is_refused(which, tmp_path, encoded):
    src = tmp_path / "a.png"
    Image.fromarray(small(16, 16)).save(src)
    ddc = tmp_path / "a.ddc"
    ddc.write_bytes(encoded.data)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="names a folder"):
        if which == "encode":
            ddcodec.encode_file(src, str(tmp_path / "new") + "/", channels=4)
        else:
            ddcodec.decode_file(ddc, str(tmp_path / "new") + os.sep)
    assert not (tmp_path / "new").exists()
