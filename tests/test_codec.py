import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from PIL import Image

import ddcodec
from ddcodec import Architecture, FitConfig, QuantConfig
from ddcodec.errors import ConfigError, ImageError
from ddcodec.fit import fell_back
from ddcodec.metrics import psnr

from .conftest import FAST_FIT, FAST_QUANT, assert_decodes_like_the_fit, small


def test_decode_gives_the_psnr_encode_reported(image, encoded):
    decoded = ddcodec.decode(encoded.data)
    assert abs(psnr(decoded, image) - encoded.psnr) <= 0.05
    assert_decodes_like_the_fit(decoded, image, encoded)


def test_bpp_is_from_the_real_file_size(image, encoded, tmp_path):
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "a.png")
    r = ddcodec.encode_file(tmp_path / "a.png", channels=8, fit=FAST_FIT, quant=FAST_QUANT, device="cpu")
    on_disk = (tmp_path / "a.ddc").stat().st_size
    assert r.data == encoded.data  # the file holds what the API returned for the same image
    assert r.bpp == pytest.approx(8 * on_disk / (48 * 32)) and r.bytes == on_disk


def test_reencode_is_byte_identical(image, encoded):
    again = ddcodec.encode(image, channels=8, fit=FAST_FIT, quant=FAST_QUANT, device="cpu")
    assert again.data == encoded.data


def test_quantization_costs_at_most_a_tenth_of_a_db_at_default_settings():
    img = small(64, 48)
    r = ddcodec.encode(img, channels=12, fit=FitConfig(iters=400), device="cpu")
    assert r.psnr_float - r.psnr <= 0.1


def test_larger_max_loss_gives_a_smaller_file():
    img = small(64, 48)
    kw = dict(channels=12, fit=FitConfig(iters=300), device="cpu")
    fine = ddcodec.encode(img, quant=QuantConfig(max_loss_db=0.05, qat_iters=0), **kw)
    coarse = ddcodec.encode(img, quant=QuantConfig(max_loss_db=2.0, qat_iters=0), **kw)
    assert coarse.bytes < fine.bytes and coarse.psnr < fine.psnr


@pytest.mark.parametrize("w,h,mode", [(37, 23, "RGB"), (1, 1, "RGB"), (30, 20, "L"), (3, 70, "RGB")])
def test_odd_sizes_and_grayscale_round_trip(w, h, mode):
    img = small(w, h, mode)
    r = ddcodec.encode(img, channels=4, layers=4, fit=FitConfig(iters=40),
                       quant=QuantConfig(qat_iters=5), device="cpu")
    out = ddcodec.decode(r.data)
    # approx, not a difference: a 1x1 image can be fitted exactly, and inf - inf is nan
    assert psnr(out, img) == pytest.approx(r.psnr, abs=0.05)
    assert_decodes_like_the_fit(out, img, r)


def test_the_input_is_not_stored_in_the_file(encoded):
    from ddcodec import bitstream, decoding, entropy
    header, payload = bitstream.unpack(encoded.data)
    _, ints = decoding._parse(encoded.data, bitstream.MAX_WORK)
    # the file is the header, the coded weights and its CRC, and nothing else: the payload is
    # exactly the entropy coding of the weights' integers, and the header packs back to the file
    assert payload == entropy.encode([q.ravel() for q in ints], header.models)
    assert bitstream.pack(header, payload) == encoded.data
    assert len(encoded.data) < 8 * 4 * 8 * 3  # far less than even a float z of 8x2x3


def test_bad_arrays_are_refused():
    with pytest.raises(ImageError):
        ddcodec.encode(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError):
        ddcodec.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError):
        ddcodec.encode(np.zeros((0, 4, 3), np.uint8))


def test_portrait_and_landscape_share_a_bank_and_decode_upright():
    land, port = small(40, 24), small(24, 40)
    rs = ddcodec.encode_bank([land, port], channels=8, layers=4, fit=FitConfig(iters=200),
                             quant=QuantConfig(qat_iters=5), device="cpu")
    for r, img in zip(rs, [land, port]):
        out = ddcodec.decode(r.data)
        assert out.shape == img.shape
        assert abs(psnr(out, img) - r.psnr) <= 0.05 and r.psnr > 17  # upside down: ~12 dB


def test_mixed_sizes_cannot_share_a_bank():
    with pytest.raises(ImageError):
        ddcodec.encode_bank([small(40, 24), small(30, 24)], channels=4, device="cpu")


def test_file_helpers_round_trip_and_refuse_to_overwrite(tmp_path):
    from PIL import Image
    from ddcodec.errors import OutputExistsError
    img = small(24, 16)
    Image.fromarray(img).save(tmp_path / "a.png")
    kw = dict(channels=4, layers=3, fit=FitConfig(iters=20), quant=QuantConfig(qat_iters=2), device="cpu")
    r = ddcodec.encode_file(tmp_path / "a.png", **kw)
    assert (tmp_path / "a.ddc").read_bytes() == r.data
    (tmp_path / "old.ddc").write_bytes(b"earlier")  # a different file: an overwrite would show
    with pytest.raises(OutputExistsError):
        ddcodec.encode_file(tmp_path / "a.png", tmp_path / "old.ddc", **kw)
    assert (tmp_path / "old.ddc").read_bytes() == b"earlier"
    out = ddcodec.decode_file(tmp_path / "a.ddc", tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), out)
    source = (tmp_path / "a.png").read_bytes()
    with pytest.raises(OutputExistsError):
        ddcodec.decode_file(tmp_path / "a.ddc", tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == source
    ddcodec.encode_file(tmp_path / "a.png", tmp_path / "old.ddc", force=True, **kw)  # with force: replaced
    assert ddcodec.decode((tmp_path / "old.ddc").read_bytes()).shape == img.shape


def test_an_unreadable_ddc_file_is_a_read_error_not_an_image_error(tmp_path):
    from ddcodec.errors import ReadError
    for src, why in ((tmp_path / "missing.ddc", "No such file"), (tmp_path, "directory")):
        with pytest.raises(ReadError, match=why) as e:
            ddcodec.decode_file(src, tmp_path / "out.png")
        assert not isinstance(e.value, ImageError) and str(src) in str(e.value)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.filterwarnings("error:torch.compile failed")  # an eager fallback would prove nothing
def test_a_compiled_reencode_is_byte_identical(image):
    # compiled kernels round differently from eager ones, but always the same way
    fit = FitConfig(iters=60, compile=True)
    a, b = (ddcodec.encode(image, channels=8, layers=3, fit=fit, quant=FAST_QUANT, device="cpu") for _ in range(2))
    assert a.data == b.data


@pytest.mark.filterwarnings("error:torch.compile failed")
def test_a_compiled_fit_reaches_the_eager_fit_and_its_file_decodes_anywhere(image):
    # torch.compile fuses kernels and rounds differently, so the bytes may differ; the fit
    # must not: same steps, same start, a PSNR within 0.05 dB, and a file the eager decoder reads.
    from ddcodec.codec import fit_bank, quantize_bank
    eager = ddcodec.encode(image, channels=8, layers=3, fit=FitConfig(iters=60), quant=FAST_QUANT, device="cpu")
    bank = fit_bank([image], 8, 3, FitConfig(iters=60, compile=True), device="cpu")
    assert bank.model._ddc_compiled.tried and not fell_back(bank.model)  # compiled kernels ran
    fused = quantize_bank(bank, FAST_QUANT)[0]
    assert abs(fused.psnr_float - eager.psnr_float) <= 0.05
    assert abs(psnr(ddcodec.decode(fused.data), image) - fused.psnr) <= 0.05


@given(st.integers(8, 48), st.integers(8, 48), st.integers(3, 6), st.floats(0.02, 1.0), st.integers(0, 3))
@settings(max_examples=10, deadline=None)
def test_rounding_costs_at_most_the_loss_budget(w, h, layers, budget, seed):
    # without fine-tuning, the decoded file is the rounded net: its loss against the float fit
    # must stay within max_loss_db (plus 8-bit output rounding), whatever the size and depth
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    r = ddcodec.encode(img, 6, layers, FitConfig(iters=120, seed=seed), QuantConfig(max_loss_db=budget, qat_iters=0), "cpu")
    assert r.psnr >= r.psnr_float - budget - 0.05


_ODD = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
                 st.text(max_size=3), st.booleans(), st.none(), st.just([1]))


_REFUSED = object()


def _taken(config, field, value):
    """The field's value once the config is built with it, or _REFUSED on a ConfigError (any
    other exception fails the test)."""
    from ddcodec.errors import ConfigError
    try:
        return getattr(config(**{field: value}), field)
    except ConfigError:
        return _REFUSED


# each numeric field's valid range, (lo, hi, lo_open, hi_open): a value taken must lie in it
_FIT_RANGES = {"iters": (0, 10_000_000, False, False), "seed": (0, 2**64 - 1, False, False),
               "lr": (0, 1, True, False), "lr_floor": (0, 1, False, False), "input_noise": (0, 10, False, False),
               "stop_mse": (0, 1, False, True), "average": (0, 1, False, True), "beta1": (0, 1, False, True),
               "beta2": (0, 1, False, True), "rollback_db": (0, 100, False, False)}
_QUANT_RANGES = {"max_loss_db": (0, 40, False, False), "qat_iters": (0, 1_000_000, False, False),
                 "qat_lr": (0, 1, True, False), "search_rounds": (1, 60, False, False),
                 "target_bpp": (0, 64, True, False), "target_psnr": (0, 100, True, False)}


def _in_range(value, lo, hi, lo_open, hi_open) -> bool:
    return (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)


@given(st.sampled_from(["iters", "seed", "lr", "lr_floor", "input_noise", "stop_mse", "average",
                        "beta1", "beta2", "rollback_db", "compile", "live_first_block", "precision", "optimizer",
                        "margin"]), _ODD)
@example("iters", -1)
@example("lr", -math.inf)
@example("rollback_db", 1e300)
@settings(max_examples=200, deadline=None)
def test_a_fit_setting_is_taken_or_refused_with_a_config_error(field, value):
    got = _taken(FitConfig, field, value)
    if got is _REFUSED:
        return
    # taken: then it is a usable value, never NaN or a string number, and within its range
    assert got is None or isinstance(got, (bool, int, float)) or got in ("auto", "fp32", "tf32", "bf16")
    assert not (isinstance(got, float) and got != got)
    if field in ("iters", "seed"):
        assert isinstance(got, int) and not isinstance(got, bool)
    if field in ("live_first_block", "margin"):  # a switch: never a number that happens to be truthy
        assert got is None or type(got) is bool
    if field == "compile":
        assert type(got) is bool or got == "auto" or got in ddcodec.fit.COMPILE_PRESETS
    if field == "optimizer":
        assert got is None or got in ddcodec.fit.OPTIMIZERS
    if field in _FIT_RANGES and got is not None:
        assert _in_range(got, *_FIT_RANGES[field]), (field, got)


@given(st.sampled_from(["max_loss_db", "qat_iters", "qat_lr", "search_rounds", "target_bpp", "target_psnr"]), _ODD)
@example("qat_iters", -3)
@example("max_loss_db", -1e300)
@settings(max_examples=120, deadline=None)
def test_a_quant_setting_is_taken_or_refused_with_a_config_error(field, value):
    got = _taken(QuantConfig, field, value)
    if got is _REFUSED:
        return
    assert got is None or (isinstance(got, (int, float)) and not isinstance(got, bool) and got == got)
    if field in ("qat_iters", "search_rounds"):
        assert isinstance(got, int)
    if got is not None:
        assert _in_range(got, *_QUANT_RANGES[field]), (field, got)


@pytest.mark.parametrize("kwargs", [
    dict(channels=4.0), dict(layers=None), dict(device=None), dict(tile="bogus"), dict(tile=(8,)),
    dict(progress=5), dict(fit=None), dict(quant=None),
])
def test_bad_library_arguments_are_config_errors(kwargs):
    from ddcodec.errors import ConfigError
    args = dict(channels=4, layers=2, fit=FitConfig(iters=5), quant=QuantConfig(qat_iters=0), device="cpu") | kwargs
    with pytest.raises(ConfigError):
        ddcodec.encode(small(16, 16), **args)


@pytest.mark.parametrize("data", ["x.ddc", None, 5, np.zeros(8, np.uint8)])
def test_decode_and_info_take_bytes_only(data):
    from ddcodec.errors import ConfigError
    with pytest.raises(ConfigError):
        ddcodec.decode(data)
    with pytest.raises(ConfigError):
        ddcodec.info(data)


@pytest.mark.parametrize("data", ["x.ddc", None, 5, np.zeros(8, np.uint8)])
def test_load_model_takes_bytes_only(data):
    from ddcodec.errors import ConfigError
    with pytest.raises(ConfigError):
        ddcodec.load_model(data)


def test_load_model_refuses_a_bad_work_bound(ddc_bytes):
    from ddcodec.errors import ConfigError
    with pytest.raises(ConfigError):
        ddcodec.load_model(ddc_bytes, max_work="x")


@pytest.mark.parametrize("kwargs", [dict(src=b"a.ddc"), dict(src=None), dict(dst=5), dict(force="False"),
                                    dict(force=1)])
def test_the_file_functions_check_their_arguments_types(tmp_path, ddc_bytes, kwargs):
    from ddcodec.errors import ConfigError
    (tmp_path / "a.ddc").write_bytes(ddc_bytes)
    (tmp_path / "old.png").write_bytes(b"keep")
    args = dict(src=tmp_path / "a.ddc", dst=tmp_path / "old.png", force=False) | kwargs
    with pytest.raises(ConfigError):
        ddcodec.decode_file(**args)
    assert (tmp_path / "old.png").read_bytes() == b"keep"  # force="False" replaced it before
    Image.fromarray(small(16, 16)).save(tmp_path / "in.png")
    (tmp_path / "old.ddc").write_bytes(b"keep")
    args = dict(src=tmp_path / "in.png", dst=tmp_path / "old.ddc", force=False) | kwargs
    with pytest.raises(ConfigError):
        ddcodec.encode_file(**args, channels=4, layers=2, fit=FitConfig(iters=5), device="cpu")
    assert (tmp_path / "old.ddc").read_bytes() == b"keep"


def test_info_says_when_a_file_was_fitted_transposed_and_load_model_renders_it_so(tmp_path):
    import torch

    from ddcodec.nets import crop, seeded_input
    land, port = small(24, 16), small(16, 24)
    a, b = ddcodec.encode_bank([land, port], 4, 3, FitConfig(iters=20), QuantConfig(qat_iters=0), device="cpu")
    assert ddcodec.info(a.data)["transposed"] is False and ddcodec.info(b.data)["transposed"] is True
    header, model = ddcodec.load_model(b.data)
    with torch.no_grad():  # as the docstring says: z for the turned size, then turned back
        out = model(seeded_input(header.arch, header.width, header.height, header.seed)[None])[0]
        out = crop(header.arch, out, header.width, header.height).mT
    rendered = np.rint(out.permute(1, 2, 0).numpy() * 255)
    assert np.abs(rendered - ddcodec.decode(b.data).astype(float)).max() <= 1


def test_an_image_format_that_would_shrink_the_image_is_refused(tmp_path, ddc_bytes):
    from ddcodec.errors import OutputError
    (tmp_path / "a.ddc").write_bytes(ddc_bytes)
    with pytest.raises(OutputError, match="would hold this"):
        ddcodec.decode_file(tmp_path / "a.ddc", tmp_path / "a.ico")
    assert not (tmp_path / "a.ico").exists()


def test_an_empty_bank_encodes_to_nothing():
    assert ddcodec.encode_bank([], 4, 2, FitConfig(iters=5), device="cpu") == []


@pytest.mark.parametrize("mask,ok", [
    (np.ones((4, 4), np.uint8), True), (np.full((4, 4), 255, np.uint8), False),
    (np.zeros((4, 4), bool), False), (np.ones((4, 4, 3), bool), False), ([[1]], False),
])
def test_a_mask_is_bools_or_zero_one_with_a_known_pixel(mask, ok):
    from ddcodec.degrade import Degradation
    from ddcodec.errors import ConfigError
    if ok:
        assert Degradation(mask=mask).mask.dtype == bool
    else:
        with pytest.raises(ConfigError):
            Degradation(mask=mask)


@given(h=st.integers(1, 12), w=st.integers(1, 12), grey=st.booleans(), n=st.integers(1, 4),
       turns=st.lists(st.booleans(), min_size=4, max_size=4), seed=st.integers(0, 2**16))
def test_a_bank_orients_every_member_like_the_first_and_each_turns_back_unchanged(h, w, grey, n, turns, seed):
    from ddcodec import bitstream
    from ddcodec.codec import _orient, _unorient, bank_key
    rng = np.random.default_rng(seed)
    shape = (h, w) if grey else (h, w, 3)
    imgs = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    imgs = [imgs[0]] + [im.swapaxes(0, 1).copy() if t else im for im, t in zip(imgs[1:], turns)]
    assert len({bank_key(im.shape) for im in imgs}) == 1  # portrait and landscape: one bank
    oriented, flags = _orient(imgs)
    assert all(o.shape == imgs[0].shape for o in oriented)
    for im, o, f in zip(imgs, oriented, flags):
        assert bool(f & bitstream.FLAG_TRANSPOSED) == (im.shape != imgs[0].shape)
        assert np.array_equal(_unorient(o, f), im)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_numpy_integer_widths_are_taken_as_python_ints(dtype):
    import json
    r = ddcodec.encode(small(16, 16), dtype(32), dtype(3), FitConfig(iters=3), QuantConfig(qat_iters=1), device="cpu")
    assert type(r.arch.channels) is int and r.arch.channels == 32
    json.dumps(r.summary())  # JSON-ready, as its docstring says


@pytest.mark.timeout(120)  # before the fix the int32 counts overflowed, passed the limit, and the fit ran
def test_a_numpy_int32_width_over_the_readers_limit_is_refused_as_a_python_one_is():
    from ddcodec.errors import ImageError
    with pytest.raises(ImageError, match="multiply-adds"):
        ddcodec.encode(np.zeros((512, 512), np.uint8), np.int32(1024), 1, FitConfig(iters=1, margin=False), device="cpu")


def test_a_compression_fit_has_a_margin_from_k_9_unless_told_and_each_decodes_to_the_image_size():
    img = small(24, 16)
    run = lambda k, **fit: ddcodec.encode(img, k, 3, FitConfig(iters=5, **fit), QuantConfig(qat_iters=0), device="cpu")  # noqa: E731
    wide, narrow, asked, refused = run(9), run(8), run(4, margin=True), run(9, margin=False)
    assert wide.arch.margin and wide.data[4] == 5 and ddcodec.info(wide.data)["arch"]["margin"] is True
    assert not narrow.arch.margin and narrow.data[4] == 3  # below fit.MARGIN_MIN_K
    assert asked.arch.margin and not refused.arch.margin
    for r in (wide, narrow, asked, refused):
        assert ddcodec.decode(r.data).shape == img.shape


def test_the_default_margin_keeps_to_the_readers_limits_the_corner_keeps_to_and_an_asked_one_is_refused_past_them():
    # k=64 at 2048x2048 is the limit's own example: its 2080x2080 margin canvas is over MAX_WORK
    from ddcodec import bitstream
    from ddcodec.codec import with_margin
    from ddcodec.nets import work
    net = Architecture("deep-decoder", 64, 6, 3)
    assert work(net, 2048, 2048) <= bitstream.MAX_WORK < work(replace(net, margin=True), 2048, 2048)
    assert not with_margin(net, 2048, 2048, FitConfig()).margin
    assert with_margin(net, 2048, 1024, FitConfig()).margin  # under the limit: the default's margin
    with pytest.raises(ImageError, match="--margin off"):  # refused before any fitting
        ddcodec.encode(np.zeros((2048, 2048, 3), np.uint8), 64, 6, FitConfig(iters=1, margin=True), device="cpu")


def test_a_net_with_no_quarter_input_pixel_to_spare_has_no_margin_and_writes_version_3():
    from ddcodec.codec import with_margin
    for layers in (1, 2):  # f // 4 == 0: nets.canvas pads nothing, so version 5 would buy nothing
        assert not with_margin(Architecture("deep-decoder", 9, layers, 3), 64, 64, FitConfig(margin=True)).margin
    assert with_margin(Architecture("deep-decoder", 9, 3, 3), 64, 64, FitConfig()).margin
    r = ddcodec.encode(small(40, 3), 9, 6, FitConfig(iters=3), QuantConfig(qat_iters=0), device="cpu")
    assert r.arch.layers <= 2 and not r.arch.margin and r.data[4] == 3
    assert ddcodec.decode(r.data).shape == (3, 40, 3)


def test_a_margin_asked_of_the_skip_net_is_refused():
    with pytest.raises(ConfigError, match="margin"):
        ddcodec.encode(small(16, 16), 8, 3, FitConfig(iters=1, margin=True), arch="skip", device="cpu")


def test_tiles_whose_margins_together_would_pass_the_shared_budget_keep_the_corner_by_default(monkeypatch):
    # 512 tiles of 256x160 at k=64: the 2^37 multiply-adds the tiles share allow 593 corner
    # canvases (256x160) and 439 margin canvases (288x192); the fits themselves are stubbed out
    import ddcodec.codec as codec
    seen = []

    def stop(pieces, k, layers, fit, *rest):
        seen.append(fit.margin)
        raise KeyboardInterrupt  # past the budget check: nothing to fit here
    monkeypatch.setattr(codec, "fit_bank", stop)
    img = np.zeros((2560, 8192, 3), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        ddcodec.encode(img, 64, 6, FitConfig(iters=1), device="cpu", tile=(256, 160))
    assert seen == [False]
    with pytest.raises(ImageError, match="--margin off"):
        ddcodec.encode(img, 64, 6, FitConfig(iters=1, margin=True), device="cpu", tile=(256, 160))
