"""Reading and writing images, and the safe-write rule for every output.

Images are uint8 arrays [H, W, 3] or [H, W]. Input modes are either converted without changing
a pixel value (palette -> RGB, 1-bit -> L, opaque alpha dropped, EXIF orientation applied) or
refused with a one-line reason; never silently altered.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, OutputError, OutputExistsError

MAX_INPUT_PIXELS = 1 << 26  # the encoder's own limit; Pillow's bomb guard stays on as well


GRAY_MODES = ("1", "L", "LA")  # the modes from_pil turns into [H, W] arrays; the rest give RGB or are refused


def channels_of_mode(mode: str) -> int:
    """The channels from_pil gives an image of this Pillow mode, known from the header alone."""
    return 1 if mode in GRAY_MODES else 3


def decoded_name(src) -> Path:
    """Where a decoded .ddc goes by default: beside it as <stem>.decoded.png, so the original
    photo.png it was made from is never in the way."""
    src = Path(src)
    return src.with_name(src.stem + ".decoded.png")


def from_pil(im: Image.Image, max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # a broken EXIF block is the file's problem, not a crash
        raise ImageError(f"cannot apply EXIF orientation: {e}") from None
    if im.width * im.height == 0:
        raise ImageError("image has zero size")
    if im.width * im.height > max_pixels:
        raise ImageError(f"image has {im.width * im.height} pixels, more than the limit {max_pixels}")
    if im.mode == "P":  # a palette holds exact RGB(A) values: expanding it changes nothing
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":  # palette colours with an alpha channel: RGB(A), not grayscale
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        if np.asarray(im.getchannel("A")).min() < 255:
            raise ImageError("images with transparency are not supported "
                             "(flatten the alpha channel first)")
        im = im.convert("RGB" if im.mode == "RGBA" else "L")  # fully opaque: nothing lost
    if im.mode == "1":
        im = im.convert("L")  # 0/255 exactly
    if im.mode not in ("RGB", "L"):
        raise ImageError(f"unsupported image mode {im.mode} (16-bit, CMYK and float images are "
                         "refused; convert to 8-bit RGB or grayscale)")
    return np.asarray(im, dtype=np.uint8).copy()


def read_image(path, max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """Any image Pillow reads -> uint8 [H, W, 3] or [H, W]."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:  # refuse before decoding any pixel data
                raise ImageError(f"{path}: {im.width}x{im.height} has more pixels than the limit {max_pixels}")
            im.load()
            return from_pil(im, max_pixels)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None


def check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ImageError("image must be a uint8 numpy array")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ImageError(f"image must be [H, W] or [H, W, 3], got shape {img.shape}")
    if img.shape[0] * img.shape[1] == 0:
        raise ImageError("image has zero size")
    return img


def png_bytes(img: np.ndarray) -> bytes:
    return image_bytes(img, Path("x.png"))


def image_bytes(img: np.ndarray, path) -> bytes:
    """The bytes of img in the format path's suffix names (PNG when it has none)."""
    import io

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix, None if suffix else "PNG")
    if fmt is None:
        raise ImageError(f"{path}: unknown image format {suffix!r}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def write_atomic(path, data: bytes, force: bool = False, inputs=()) -> None:
    """Write via a temp file in the same folder, fsync, rename: a reader never sees a partial
    file, a crash leaves none, and an existing file is replaced only with force."""
    path = Path(path)
    for src in inputs:
        if path.exists() and Path(src).exists() and os.path.samefile(src, path):
            raise OutputExistsError(f"{path}: refusing to overwrite the input")
        if path.resolve() == Path(src).resolve():
            raise OutputExistsError(f"{path}: refusing to overwrite the input")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists (use --force to replace it)")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror}") from None
        raise
