"""The Python API takes what a caller is likely to pass (numpy's integers, arrays, generators)
and refuses the rest with a typed error before any work."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

import ddcodec
from ddcodec import FitConfig, QuantConfig, restore
from ddcodec.errors import ConfigError
from ddcodec.nets import layers_for

from .conftest import small

TINY_FIT = FitConfig(iters=5)
NO_QAT = QuantConfig(qat_iters=0)


@pytest.mark.parametrize("seed", [np.int64(5), np.uint32(5), np.uint64(5)])
def test_a_numpy_seed_is_a_seed(seed):
    fit = FitConfig(iters=5, seed=seed)
    assert type(fit.seed) is int and fit.seed == 5
    res = ddcodec.encode(small(16, 16), 4, fit=fit, quant=NO_QAT, device="cpu")
    assert ddcodec.info(res.data)["seed"] == 5


def test_numpy_numbers_in_the_configs_are_kept_as_python_numbers():
    fit = FitConfig(iters=np.int32(7), lr=np.float32(0.01))
    quant = QuantConfig(qat_iters=np.int64(3), target_bpp=np.float64(1.5))
    assert (type(fit.iters), type(fit.lr), type(quant.qat_iters), type(quant.target_bpp)) == (int, float, int, float)


def test_a_tile_size_given_as_an_array_tiles_the_image():
    res = ddcodec.encode(small(32, 32), 4, fit=TINY_FIT, quant=NO_QAT, device="cpu", tile=np.array([16, 16]))
    assert ddcodec.info(res.data)["tiles"] == [2, 2]


@pytest.mark.parametrize("kwargs", [dict(degradation="x"), dict(tile="ab"), dict(tile=np.array([4, 4])),
                                    dict(progress=5)])
def test_bad_encode_arguments_are_config_errors_before_any_fit(kwargs, monkeypatch):
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    with pytest.raises(ConfigError):
        ddcodec.encode(small(16, 16), 4, fit=TINY_FIT, device="cpu", **kwargs)


@pytest.mark.parametrize("task", ["denoise", "inpaint", "superres"])
@pytest.mark.parametrize("kwargs", [dict(progress=5), dict(channels=0), dict(layers=13)])
def test_bad_restoration_arguments_are_config_errors_before_any_fit(task, kwargs, monkeypatch):
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    img = small(16, 16)
    call = {"denoise": lambda: restore.denoise(img, iters=5, device="cpu", **kwargs),
            "inpaint": lambda: restore.inpaint(img, np.full((16, 16), 255, np.uint8), iters=5, device="cpu", **kwargs),
            "superres": lambda: restore.superres(img, 2, iters=5, device="cpu", **kwargs)}[task]
    with pytest.raises(ConfigError):
        call()


@pytest.mark.parametrize("quant", [None, "x", QuantConfig(target_psnr=20)])
def test_denoise_refuses_a_bad_quant_and_a_psnr_target_before_the_fit(quant, monkeypatch):
    # a PSNR target would be met against the fit's own average (the clean image is unknown)
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    with pytest.raises(ConfigError):
        restore.denoise(small(16, 16), iters=5, device="cpu", quant=quant)


def test_encode_bank_takes_any_iterable_of_images():
    images = (small(16, 16) for _ in range(2))
    assert len(ddcodec.encode_bank(images, 4, fit=TINY_FIT, quant=NO_QAT, device="cpu")) == 2


@given(st.integers(1, 12), st.integers(1, 5000), st.integers(1, 5000))
@settings(deadline=None)
def test_the_blocks_for_a_size_leave_every_side_two_input_pixels(layers, height, width):
    d = layers_for(layers, height, width)
    assert 1 <= d <= layers
    for side in (height, width):  # one input pixel would make the whole side constant
        assert side == 1 or -(-side // 2 ** (d - 1)) >= 2
    if d < layers:  # and no more blocks were taken off than that needs
        assert any(side > 1 and -(-side // 2 ** d) < 2 for side in (height, width))


@pytest.mark.parametrize("width,height", [(48, 32), (24, 16), (40, 3)])
def test_a_small_image_decodes_with_detail_along_both_sides(width, height):
    # at 6 blocks a side of at most 32 pixels started from one input pixel: 48x32 decoded to 32
    # equal rows, 24x16 to one colour
    img = small(width, height)
    res = ddcodec.encode(img, 8, fit=FitConfig(iters=60), quant=NO_QAT, device="cpu")
    out = ddcodec.decode(res.data)
    assert res.arch.layers == layers_for(6, height, width) < 6
    assert len(np.unique(out.reshape(height, -1), axis=0)) > 1  # rows differ
    assert len(np.unique(out.transpose(1, 0, 2).reshape(width, -1), axis=0)) > 1  # and columns


@pytest.mark.parametrize("margin", [None, False])
def test_denoise_with_a_rate_target_picks_k_from_it(margin):
    # the restoration default k=128 cannot keep to 2 bpp on a 64x64 image: it failed after the
    # fit; and with the margin the distilled net could not reach it within 6 dB of its average
    r = restore.denoise(small(64, 64), iters=20, device="cpu", quant=QuantConfig(qat_iters=0, target_bpp=2.0),
                        margin=margin)
    assert r.result.arch.channels < 128 and r.result.bpp <= 2.0


@pytest.mark.parametrize("one", [lambda img, tmp: img, lambda img, tmp: img[..., :1], lambda img, tmp: str(tmp),
                                 lambda img, tmp: tmp, lambda img, tmp: Image.fromarray(img),
                                 lambda img, tmp: None, lambda img, tmp: 5])
def test_encode_bank_refuses_one_image_given_alone(one, tmp_path, monkeypatch):
    # an [H, W, 3] array iterated as H grey images of W x 3 pixels, a path as its characters
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    img = small(16, 16)
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    with pytest.raises(ConfigError):
        ddcodec.encode_bank(one(img, path), 4, fit=TINY_FIT, quant=NO_QAT, device="cpu")


def test_encode_bank_takes_a_stack_of_grey_images():
    stack = np.stack([small(16, 16, "L"), small(16, 16, "L")[::-1]])  # [B, H, W]
    res = ddcodec.encode_bank(stack, 4, fit=TINY_FIT, quant=NO_QAT, device="cpu")
    assert [(r.width, r.height) for r in res] == [(16, 16), (16, 16)]


@pytest.mark.parametrize("progress", [lambda msg: None, lambda stage, done: None, lambda a, b, c, d, e, f: None])
def test_a_progress_callback_that_cannot_take_its_arguments_is_refused_before_the_fit(progress, monkeypatch):
    monkeypatch.setattr(ddcodec.codec, "optimise", None)
    with pytest.raises(ConfigError, match="progress"):
        ddcodec.encode(small(16, 16), 4, fit=TINY_FIT, device="cpu", progress=progress)


def test_a_progress_callback_is_called_with_the_documented_arguments():
    calls = []
    ddcodec.encode(small(16, 16), 4, fit=FitConfig(iters=20), quant=QuantConfig(qat_iters=10), device="cpu",
                   progress=lambda stage, done, total, loss, psnr: calls.append((stage, done, total)))
    assert ("fit", 20, 20) in calls and ("qat", 10, 10) in calls


def test_encode_takes_any_path_like(tmp_path):
    import os

    path = tmp_path / "a.png"
    Image.fromarray(small(16, 16)).save(path)
    entry = next(e for e in os.scandir(tmp_path) if e.name == "a.png")  # an os.PathLike, not a Path
    a = ddcodec.encode(entry, 4, fit=TINY_FIT, quant=NO_QAT, device="cpu")
    b = ddcodec.encode(path, 4, fit=TINY_FIT, quant=NO_QAT, device="cpu")
    assert a.data == b.data


def test_an_image_of_no_known_kind_is_named_as_such():
    import io

    from ddcodec.errors import ImageError
    with pytest.raises(ImageError, match="a PIL image or a path"):
        ddcodec.encode(io.BytesIO(b"x"), 4, fit=TINY_FIT, device="cpu")


def test_an_empty_image_path_is_named_as_empty_not_read_as_the_current_folder():
    from ddcodec.errors import ImageError
    with pytest.raises(ImageError, match="empty"):
        ddcodec.encode("", 4, fit=TINY_FIT, device="cpu")


@pytest.mark.parametrize("value", [np.False_, np.True_])
def test_a_numpy_bool_for_compile_is_kept_as_a_python_bool(value):
    fit = FitConfig(compile=value)
    assert type(fit.compile) is bool and fit.compile == bool(value)
