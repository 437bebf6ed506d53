"""Reading and writing images, and the safe-write rule for every output.

Images are uint8 arrays [H, W, 3] or [H, W]. Input modes are either converted without changing
a pixel value (palette -> RGB, 1-bit -> L, opaque alpha dropped, EXIF orientation applied) or
refused with a one-line reason; never silently altered.
"""
import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, OutputError, OutputExistsError

MAX_INPUT_PIXELS = 1 << 26  # the encoder's own limit; Pillow's bomb guard stays on as well
# What a pipe may hold (`ddc encode <(curl ...)`): a stream cannot be probed for its size, so
# its bytes are read up to this and no further; 64 Mpixels of RGB, uncompressed, and a header
MAX_STREAM_BYTES = 3 * MAX_INPUT_PIXELS + (1 << 20)


GRAY_MODES = ("1", "L", "LA")  # the modes from_pil turns into [H, W] arrays; the rest give RGB or are refused


def channels_of_mode(mode: str) -> int:
    """The channels from_pil gives an image of this Pillow mode, known from the header alone."""
    return 1 if mode in GRAY_MODES else 3


def decoded_name(src) -> Path:
    """Where a decoded .ddc goes by default: beside it as <stem>.decoded.png, so the original
    photo.png it was made from is never in the way."""
    return beside(src, Path(src).stem + ".decoded.png")


def beside(src, name: str) -> Path:
    """A default output named `name` in src's folder. Only beside a file: a pipe's /dev/fd/63
    (`ddc encode <(...)`) passes every check for /dev/fd/63.ddc, whose write would then fail,
    after the fit."""
    src = named(src)
    if os.path.isdir(src):
        raise ImageError(f"{src} is a folder, not a file")
    if os.path.exists(src) and not os.path.isfile(src):
        raise OutputError(f"{src} is not a regular file, so no output can go beside it: name the output "
                          "(-o; dst in the library)")
    return src.with_name(name)


def named(path, error=ImageError) -> Path:
    """path, if it names a file: Path("") is ".", which has no name to derive an output from."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise error(f"{str(path)!r} is not a file name")
    return path


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
    elif im.mode in ("RGB", "L", "1") and "transparency" in im.info:
        # a PNG tRNS colour key: the pixels of that colour are transparent, as a palette's are
        # (a 1-bit image may carry one too: converted to LA, its key becomes the alpha)
        im = im.convert("RGBA" if im.mode == "RGB" else "LA")
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
        with _image_source(path) as f, Image.open(f) as im:
            if im.width * im.height > max_pixels:  # refuse before decoding any pixel data
                raise ImageError(f"{path}: {im.width}x{im.height} has more pixels than the limit {max_pixels}")
            _refuse_what_pixels_lose(im, path)
            im.load()
            try:
                return from_pil(im, max_pixels)
            except ImageError as e:  # name the file: with a mask and an image, which one
                raise ImageError(f"{path}: {e}") from None
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {e}") from None
    except Image.UnidentifiedImageError:  # its message names the stream object, not the file
        raise ImageError(f"{path}: cannot read image (not a format Pillow reads, or damaged)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None


def _image_source(path):
    """What Pillow should open for the file at path: the path itself for a file (Pillow opens
    and closes it, and names it in its errors), or for a stream its bytes. Given a pipe's path,
    Pillow reads it into memory and leaves the pipe's own handle unclosed (a ResourceWarning on
    every `ddc encode <(...)`), and reads it to its end however long: a stream is read here,
    up to MAX_STREAM_BYTES, and closed."""
    import io
    with open(path, "rb") as f:
        if f.seekable():
            return contextlib.nullcontext(path)
        data = f.read(MAX_STREAM_BYTES + 1)
    if len(data) > MAX_STREAM_BYTES:
        raise ImageError(f"{path}: a stream of more than {MAX_STREAM_BYTES} bytes, more than any image the encoder takes")
    return io.BytesIO(data)


def _refuse_what_pixels_lose(im: Image.Image, path) -> None:
    """Refuse, before decoding, a file whose pixels would not hold all of it: frames after the
    first (an animation or a multi-page TIFF), and 16-bit samples that Pillow opens in an 8-bit
    mode (RGB, RGBA and gray+alpha PNGs: its mode says RGB, only the raw mode says 16 bits)."""
    try:
        frames = getattr(im, "n_frames", 1)
    except Exception:  # noqa: BLE001 - a damaged chain of frames (a TIFF's next-IFD pointer): its first frame is still read
        frames = 1
    if frames > 1 and im.format != "MPO":  # an MPO is a JPEG with a preview or a gain map after its picture
        raise ImageError(f"{path}: {frames} frames (an animation or a multi-page file); "
                         "ddcodec encodes one still image: extract the frame first")
    if im.mode not in ("RGB", "RGBA", "LA", "L"):
        return  # other modes say their depth themselves, and from_pil refuses those it cannot keep
    for tile in getattr(im, "tile", ()):  # an Image made in memory has no tile: nothing to tell
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        # 16 bits a sample say ;16 and their byte order (RGB;16B, LA;16B, RGB;16N): BMP's BGR;16 is 5-6-5 bits a pixel
        if isinstance(raw, str) and re.search(r";(16|32)[BLN]", raw):
            raise ImageError(f"{path}: samples of more than 8 bits ({raw}) would be cut to 8; "
                             "convert to 8-bit RGB or grayscale first")


def check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ImageError("image must be a uint8 numpy array")
    img = np.asarray(img)  # a subclass (np.matrix) indexes differently
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

    suffix = check_image_name(path).suffix.lower()
    fmt = Image.registered_extensions()[suffix] if suffix else "PNG"
    buf = io.BytesIO()
    try:
        Image.fromarray(img).save(buf, format=fmt)
    except (KeyError, OSError, ValueError, TypeError) as e:  # Pillow reads more formats than it writes
        raise OutputError(f"{path}: cannot write this image as {fmt} ({e})") from None
    try:  # ICO (and the like) write what sizes they hold, smaller than the image, without a word
        with Image.open(io.BytesIO(buf.getvalue())) as back:
            size = back.size
            same = size == (img.shape[1], img.shape[0]) and _same_pixels(back, img)
    except Exception:  # noqa: BLE001 - a format Pillow writes but does not read (PDF): nothing to check
        size = same = None
    if size is not None and size != (img.shape[1], img.shape[0]):
        raise OutputError(f"{path}: {fmt} would hold this {img.shape[1]}x{img.shape[0]} image as {size[0]}x{size[1]}; "
                          "use .png, .webp, .tif, ...")
    if same is False and fmt not in LOSSY_FORMATS:
        # GIF keeps 256 colours and maps the rest to the nearest, without a word: a file that
        # is not the decoded image, in a format the user has no reason to think lossy
        raise OutputError(f"{path}: {fmt} would change this image's pixels (GIF holds 256 colours); "
                          "use .png, .tif, .bmp, ...")
    return buf.getvalue()


# Formats whose loss is the user's choice in naming them: their pixels are not checked.
LOSSY_FORMATS = {"JPEG", "MPO", "WEBP", "AVIF", "HEIF"}


def _same_pixels(back: Image.Image, img: np.ndarray) -> bool:
    """Whether an image read back holds img's pixels (in img's own mode: L or RGB)."""
    return np.array_equal(np.asarray(back.convert("L" if img.ndim == 2 else "RGB")), img)


def check_output(path, force: bool = False, inputs=()) -> Path:
    """Refuse, before any work, an output that write_atomic would refuse or could not write:
    an empty name, an input, a folder, a device, FIFO or symbolic link (replacing one with a
    regular file would break what it stood for, /dev/null included), an existing file without
    force, a name too long for the file system, a missing or read-only folder."""
    path = named(path, OutputError)
    try:  # lstat, not exists(): a name too long or a loop of links on the way is an error here,
        st = os.lstat(path)  # where exists() says False and the write would fail after the fit
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    real = os.path.realpath(path)  # realpath, not Path.resolve(): a loop of links raises there
    for src in inputs:
        if real == os.path.realpath(src) or (st is not None and _same_file(src, path)):
            raise OutputExistsError(f"{path}: refusing to overwrite the input")
    if os.path.isdir(path):
        raise OutputExistsError(f"{path} is a directory")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):  # a link, a device, a FIFO
            raise OutputError(f"{path} exists and is not a regular file; not replaced")
        if not force:
            raise OutputExistsError(f"{path} exists (use --force to replace it)")
    folder = path.parent
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {folder} is not writable")
    return path


def _same_file(a, b) -> bool:
    """Hard links and other spellings of one file; False where a is not there to compare."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def missing_folders(folder) -> list:
    """The folders from `folder` up that are not there yet, the deepest first: what a mkdir with
    parents would make. A name that could never be made (too long, a loop of links on the
    way) is an OutputError now, not the mkdir's failure later."""
    missing, p = [], Path(folder)
    while p != p.parent:
        try:
            os.lstat(p)
            break
        except (FileNotFoundError, NotADirectoryError):  # a file on the way: its caller says so
            missing.append(p)
            p = p.parent
        except OSError as e:
            raise OutputError(f"cannot make the folder {p}: {e.strerror}") from None
    return missing


def check_image_name(path, channels=None, size=None) -> Path:
    """An image output's suffix must name a format Pillow writes (none: PNG); checked before the
    fit rather than after it. channels (1 or 3): also write a blank image of that many channels
    and size ((width, height), else one pixel) to be sure."""
    suffix = Path(path).suffix.lower()
    Image.init()  # registers the writers, not only the readers
    if suffix and Image.registered_extensions().get(suffix) not in Image.SAVE:
        raise OutputError(f"{path}: {suffix!r} is not an image format this can write (use .png, .webp, .jpg, ...)")
    if channels is not None and suffix:
        # a registered writer may still fail: WMF's and GRIB's are stubs until a handler is
        # installed, XBM holds 1-bit images only; a one-pixel image of the output's channels
        # finds that now, not after the fit
        w, h = size or (1, 1)
        image_bytes(np.zeros((h, w, 3) if channels == 3 else (h, w), np.uint8), path)
    return Path(path)


def check_ddc_name(path) -> Path:
    """A .ddc output must not wear an image suffix: ddc encode a.png -o b.png would otherwise
    write weights where a reader (and the user) expects pixels."""
    suffix = Path(path).suffix.lower()
    if suffix in Image.registered_extensions():
        raise OutputError(f"{path}: a .ddc file would get the image suffix {suffix!r} (use .ddc)")
    return Path(path)


def check_outputs(outputs, force: bool = False, inputs=()) -> list:
    """check_output for each, and no two outputs the same file (the second would replace the
    first)."""
    seen = set()
    for o in outputs:
        check_output(o, force, inputs)
        key = os.path.realpath(o)
        if key in seen:
            raise OutputExistsError(f"{o} is named for two outputs")
        seen.add(key)
    return [Path(o) for o in outputs]


def _new_file_mode(path: Path) -> int:
    """mkstemp makes 0600 files; an output gets the mode a plain open() would give it (0666
    less the umask), or keeps the mode of the file it replaces."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only be read
    by setting it, a window in which another thread's new file would get the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)  # the window errs on the private side
    os.umask(old)
    return old


def write_atomic(path, data: bytes, force: bool = False, inputs=()) -> None:
    """Write via a temp file in the same folder, fsync, rename: a reader never sees a partial
    file, a crash leaves none, and an existing file is replaced only with force (and only a
    regular file: see check_output)."""
    path = check_output(path, force, inputs)
    try:
        # the name's start only (48 characters, at most 192 bytes): mkstemp adds 14, and a name near the
        # file system's limit (255 bytes) that check_output let pass must not fail here, after the fit
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:48]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, _new_file_mode(path))
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
