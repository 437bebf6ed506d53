"""Tiled files: a large image coded as a grid of small Deep Decoders (format version 4).

One Deep Decoder for a whole photo must spend its weights as k^2 per block, so at a fixed
bpp its width grows only as the square root of the pixel count, and the gap to JPEG widened
from 192x128 to 384x256 (benchmarks/NOTES.md). A grid of tiles keeps each network at the size
where the prior works best, spends the bits where each tile needs them, and fits faster: the
work per step goes as k * pixels, and each tile's k is half the whole image's.

The grid is the even split of the image into cols x rows tiles, from integer arithmetic alone,
so the decoder needs only the four numbers in the header. Each tile is an ordinary .ddc member
(version 2, 3 or 5) without its magic and CRC: the container's CRC covers them all.
"""
import math
import struct
import zlib

import numpy as np

from .bitstream import (MAGIC, MAX_MACS, MAX_PIXELS, MAX_SIDE, MAX_SYMBOLS, MAX_WORK, TILED_VERSION, _Reader,
                        _uvarint, unpack)
from .errors import ConfigError, CorruptError, LimitError, NotDDCError, TruncatedError
from .nets import macs, param_count, work

VERSION = TILED_VERSION
TILE = (192, 128)  # (width, height) of the auto tile for a 384x256 image (kodak-half: 2x2 tiles)
# the auto tile grows with the image as (long side / 384)^TILE_GROWTH: a larger photo's tiles
# hold smoother content (at 768x512, 0.5 bpp, kodim03: 3x3 tiles 32.31 dB, 4x4 31.26)
TILE_GROWTH = 0.5
REFERENCE_SIDE = 384
# each tile carries its own header (~55-60 bytes): below this budget an auto tile grows, so
# that the headers stay under ~4 % of the file (at 384x256, 192x128 tiles lost 0.3 dB to one
# network at 0.1 bpp, 307 bytes a tile, and gained 0.2-0.3 dB at 0.5-1.0 bpp, 1,536-3,072)
MIN_TILE_BYTES = 1500
# Rate allocation between the tiles of an image. A tile's distortion falls as D = C R^-GAMMA;
# GAMMA from the Deep Decoder's own curve: 1.3 dB per doubling of the rate on kodak-half
# (0.25 -> 0.5 bpp), i.e. 1.3 / (10 log10 2) = 0.43. Equal slopes dD/dR across tiles give
# R_i ~ C_i^(1 / (1 + GAMMA)), C_i from a short pilot fit of every tile at one width.
GAMMA = 0.43
PILOT_ITERS = 300
SHARE_RANGE = (0.2, 4.0)  # a tile's rate as a multiple of the image's
FLOOR_BYTES = 200  # and never under this: a member's header alone is 50-75 bytes
MAX_TILES = 1 << 12
_MEMBER_VERSIONS = (2, 3, 5)
# A tiled file's members are decoded one after another, so its decode takes their sum: they
# share the budgets a plain file has alone, as multiply-adds (nets.macs), weights (entropy
# decoding, ~0.1 us each) and padded k * pixels (nets.work: the exact decode's time follows it
# at ~60-120 ns a unit on the 2-core CPU, whatever k; its memory is per member). Work is shared
# up to this many plain files' worth: a 4K photo's tiles at 1 bpp (k ~70, ~2^29.2) fit, 4,096
# one-pixel members of 12 blocks, each run at 2048x2048 (2^35, hours), do not.
TILED_WORK_FILES = 8


def auto_tile(bpp: float, height: int, width: int) -> tuple:
    """The auto tile for an image at a rate target: TILE, grown with the image's long side
    (TILE_GROWTH), and further until the part of it inside the image holds MIN_TILE_BYTES at
    bpp, or it covers the whole image (then the grid is one network)."""
    long_side, short_side = max(height, width), min(height, width)
    a, b = TILE  # landscape: a along the long side (grid_shape turns it for portrait images)
    # Measured by the pixels a tile can hold, not its nominal area: a tile of a strip (1025x9)
    # is clipped to the strip's 9 rows, so the nominal area gave it a tenth of its bytes, and
    # a rate one network could keep was refused for the grid's tile floor
    inside = lambda s: min(a * s, long_side) * min(b * s, short_side)  # noqa: E731
    need = 8 * MIN_TILE_BYTES / bpp
    lo = max(1.0, (long_side / REFERENCE_SIDE) ** TILE_GROWTH)
    hi = max(lo, long_side / a, short_side / b)  # from here on the tile covers the image
    if inside(lo) < need:
        for _ in range(60):  # inside() grows with s: bisect (in log space) for the least s that holds need
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if inside(mid) < need else (lo, mid)
        lo = hi
    return round(a * lo), round(b * lo)


def resolve(tile, bpp, height: int, width: int):
    """encode_bank's tile argument for one image: "auto" -> auto_tile, else as given."""
    if tile == "auto":
        if bpp is None:
            raise ConfigError("auto tiles need a target bpp")
        return auto_tile(bpp, height, width)
    return tile


def tile_for(spec: str, bpp=None, compressing: bool = True):
    """A --tile option -> (width, height), "auto" or None. "auto" tiles only where the codec
    chooses k from a rate target (bpp given): a k the user gave is the width of one network
    for the whole image. compressing: False for restoration or the skip net, which take no
    tiles (auto gives none; a size is an error)."""
    spec = str(spec).strip().lower()
    if spec == "none":
        return None
    if spec == "auto":
        return "auto" if bpp and compressing else None
    if not compressing:
        raise ConfigError("--tile applies to compression with the Deep Decoder")
    try:
        w, h = (int(v) for v in spec.split("x"))
    except ValueError:
        raise ConfigError(f"--tile takes WxH (e.g. 192x128), auto or none, not {spec!r}") from None
    if w < 8 or h < 8:
        raise ConfigError(f"tiles of {w}x{h} are too small (at least 8x8)")
    return w, h


def check_rate(bpp: float, height: int, width: int, rows: int, cols: int) -> None:
    """Refuse, before the pilot fit, a rate target the grid cannot keep: every tile gets at least
    FLOOR_BYTES, so rows x cols of them may already exceed the file's budget, and the file would
    silently overshoot --bpp."""
    budget = bpp * height * width / 8
    # a grid of one tile is a plain file at the whole target: the rate search says if it cannot be met
    if rows * cols > 1 and rows * cols * FLOOR_BYTES > budget:
        raise ConfigError(f"{bpp:g} bpp is {budget:.0f} bytes for this {width}x{height} image, less than "
                          f"{rows}x{cols} tiles need ({FLOOR_BYTES} bytes each); use larger tiles, "
                          f"--tile none or a higher target")


def container_excess(width: int, height: int, rows: int, cols: int) -> int:
    """The most bytes a tiled file takes beyond its members' own files: its header, a length
    per member (members under 2 MB: 3 bytes) and its CRC, less the magic and CRC each member
    sheds (8 bytes). Positive for small grids (a few bytes for two tiles), where the members'
    shares of a rate target must leave it room."""
    n = rows * cols
    head = len(MAGIC) + 1 + sum(len(_uvarint(v)) for v in (width, height, cols, rows)) + 4
    return max(0, head + 3 * n - 8 * n)


def allocate(mse, pixels, bpp: float) -> np.ndarray:
    """Per-tile targets (bpp) from the pilot's MSEs: equal slopes under D = C R^-GAMMA, each
    share within SHARE_RANGE of bpp and at least FLOOR_BYTES, with a pixel-weighted mean of bpp
    (so the file keeps to the target) wherever the bounds allow it."""
    mse, pixels = np.asarray(mse, np.float64), np.asarray(pixels, np.float64)
    w = np.maximum(mse, 1e-12) ** (1 / (1 + GAMMA))
    w = w / np.average(w, weights=pixels)
    low = np.maximum(SHARE_RANGE[0], 8 * FLOOR_BYTES / (pixels * bpp))
    high = np.maximum(SHARE_RANGE[1], low)
    lo, hi = 1e-6, 1e6
    for _ in range(100):  # the clipped mean grows with the scale: bisect it (in log space)
        mid = math.sqrt(lo * hi)
        if np.average(np.clip(mid * w, low, high), weights=pixels) < 1:
            lo = mid
        else:
            hi = mid
    return bpp * np.clip(lo * w, low, high)


def grid_shape(height: int, width: int, tile=TILE) -> tuple:
    """(rows, cols) of the grid for an image: tiles as close to tile's size as an even split
    allows. tile is (width, height) for a landscape image; portrait images use it turned."""
    tw, th = tile if width >= height else tile[::-1]
    if tw < 1 or th < 1:
        raise ConfigError(f"tile size {tile} must be positive")
    rows, cols = max(1, round(height / th)), max(1, round(width / tw))
    if rows * cols > MAX_TILES:
        raise ConfigError(f"{cols}x{rows} tiles of {tw}x{th} exceed the reader's limit of {MAX_TILES}")
    return rows, cols


def edges(size: int, parts: int) -> list:
    """Where an even split of size into parts puts its boundaries: parts + 1 integers."""
    return [i * size // parts for i in range(parts + 1)]


def boxes(height: int, width: int, rows: int, cols: int) -> list:
    """(top, bottom, left, right) of every tile, row by row."""
    ys, xs = edges(height, rows), edges(width, cols)
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(rows) for j in range(cols)]


def split(img, rows: int, cols: int) -> list:
    """An image array -> its tiles (views), row by row."""
    return [img[t:b, l:r] for t, b, l, r in boxes(img.shape[0], img.shape[1], rows, cols)]


def merge(parts: list, height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """split's inverse: tiles, row by row, -> the height x width image. A tile of the wrong
    size or channels is corruption (the container's members each carry their own header)."""
    places = boxes(height, width, rows, cols)
    if len(parts) != len(places):
        raise CorruptError(f"{len(parts)} tiles for a grid of {cols}x{rows}")
    out = np.zeros((height, width) + parts[0].shape[2:], np.uint8)
    for part, (top, bottom, left, right) in zip(parts, places):
        if part.shape != (bottom - top, right - left) + out.shape[2:]:
            raise CorruptError(f"a tile of {part.shape[1]}x{part.shape[0]} does not fit its {right - left}x{bottom - top} "
                               "place, or the tiles differ in their channels")
        out[top:bottom, left:right] = part
    return out


def fits_for(shapes, tile, bpp=None) -> int:
    """How many tile sizes, up to transposition, encode_bank meets for images of these shapes:
    its banks, one per tile size (and, with a rate target, per k)."""
    keys = set()
    for shape in shapes:
        rows, cols = grid_shape(shape[0], shape[1], resolve(tile, bpp, shape[0], shape[1]))
        for top, bottom, left, right in boxes(shape[0], shape[1], rows, cols):
            keys.add((tuple(sorted((bottom - top, right - left))),) + tuple(shape[2:]))
    return len(keys)


def is_tiled(data: bytes) -> bool:
    return len(data) > len(MAGIC) and data[:len(MAGIC)] == MAGIC and data[len(MAGIC)] == VERSION


def grid_problem(width: int, height: int, rows: int, cols: int) -> str:
    """What is wrong with a tiled file's size and grid, or "": the one statement of the bounds
    that the writer refuses (ConfigError) and the reader calls corruption."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE and width * height <= MAX_PIXELS):
        return f"image size {width}x{height} exceeds the reader's limits"
    if not (1 <= cols <= width and 1 <= rows <= height and rows * cols <= MAX_TILES):
        return f"bad tile grid {cols}x{rows} for {width}x{height}"
    return ""


def add_cost(spent: tuple, arch, height: int, width: int) -> tuple:
    """spent plus one member's (multiply-adds, padded k * pixels, weights): what a tiled file's
    members share (budget_problem)."""
    cost = macs(arch, height, width), work(arch, height, width), param_count(arch)
    return tuple(a + b for a, b in zip(spent, cost))


def budget_problem(spent, max_work: int = MAX_WORK, max_macs: int = MAX_MACS) -> str:
    """What a tiled file's members together exceed, or "": the one statement of the shared
    budgets that the encoder checks before its fits and the reader before any decode."""
    total_macs, total_work, total_weights = spent
    if total_macs > max_macs:
        return f"more than the reader's limit of {max_macs} multiply-adds"
    if total_work > TILED_WORK_FILES * max_work:
        return f"more than the reader's limit of {TILED_WORK_FILES * max_work} k*pixels (padded) together"
    if total_weights > MAX_SYMBOLS:
        return f"more than the reader's limit of {MAX_SYMBOLS} weights together"
    return ""


def _check_packable(width: int, height: int, rows: int, cols: int, members: list) -> None:
    """Refuse (ConfigError) a grid or a member that unpack_members would take for corruption:
    the writer must not make a file that reads back as damaged."""
    problem = grid_problem(width, height, rows, cols)
    if problem:
        raise ConfigError(f"{problem}: it cannot be stored")
    if len(members) != rows * cols:
        raise ConfigError(f"{len(members)} tiles for a {cols}x{rows} grid")
    spent, channels = (0, 0, 0), None
    for i, (m, (top, bottom, left, right)) in enumerate(zip(members, boxes(height, width, rows, cols))):
        if len(m) <= len(MAGIC) or m[len(MAGIC)] not in _MEMBER_VERSIONS:
            raise ConfigError(f"tile {i} is not a version-2, -3 or -5 file")
        h, _ = unpack(m)  # a whole member file, as the reader will check it
        if h.arch.kind != "deep-decoder":
            raise ConfigError(f"tile {i} is a {h.arch.kind} net; tiles are Deep Decoders")
        spent = add_cost(spent, h.arch, h.height, h.width)
        if problem := budget_problem(spent):
            raise ConfigError(f"decoding tiles 0..{i} would take {problem}")
        channels = h.arch.out_channels if channels is None else channels  # tile 0's
        if h.arch.out_channels != channels:
            raise ConfigError(f"tile {i} has {h.arch.out_channels} channels, tile 0 {channels}: "
                              "the tiles of an image share its channels")
        if (h.width, h.height) != (right - left, bottom - top):
            raise ConfigError(f"tile {i} is {h.width}x{h.height}, its place in the grid {right - left}x{bottom - top}")


def pack(width: int, height: int, rows: int, cols: int, members: list) -> bytes:
    """Complete .ddc files, one per tile (row by row) -> one version-4 file."""
    _check_packable(width, height, rows, cols, members)
    out = bytearray(MAGIC) + bytes([VERSION])
    for v in (width, height, cols, rows):
        out += _uvarint(v)
    for m in members:
        body = m[len(MAGIC):-4]  # version byte, header, payload: the container's CRC covers it
        out += _uvarint(len(body)) + body
    return bytes(out) + struct.pack("<I", zlib.crc32(out))


def unpack_members(data: bytes, max_work: int, max_macs: int = MAX_MACS) -> tuple:
    """A version-4 file -> (width, height, rows, cols, [member .ddc files]), every field and the
    CRC checked before any member is decoded; each member is then checked as a file of its own.
    max_work bounds each member (they are decoded one at a time); the members together share
    max_macs, TILED_WORK_FILES * max_work and MAX_SYMBOLS (budget_problem), since the decode's
    time is their sum."""
    data = bytes(data)
    if not is_tiled(data):
        raise NotDDCError("not a tiled .ddc file")
    if len(data) < len(MAGIC) + 1 + 4:
        raise TruncatedError(f"truncated: {len(data)} bytes is shorter than a tiled .ddc header")
    crc_ok = zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]
    r = _Reader(data, len(MAGIC) + 1, len(data) - 4)

    def uvarint(what):
        try:
            return r.uvarint(what)
        except TruncatedError:
            if crc_ok:  # whole, yet its fields run past the end: written wrong, not cut short
                raise CorruptError(f"{what} runs past the end of the file") from None
            raise

    width, height, cols, rows = (uvarint(w) for w in ("width", "height", "columns", "rows"))
    problem = grid_problem(width, height, rows, cols)
    if problem:
        raise CorruptError(problem)
    bodies = []
    for i in range(rows * cols):
        n = uvarint(f"tile {i}'s length")
        if n > r.end - r.pos:
            raise (CorruptError if crc_ok else TruncatedError)(f"truncated: tile {i} runs past the end")
        bodies.append(r.fixed(n, f"tile {i}"))
    if r.pos != r.end:
        raise CorruptError(f"{r.end - r.pos} unexpected bytes after the last tile")
    if not crc_ok:
        raise CorruptError("CRC mismatch: the file is corrupted")
    members, spent, channels = [], (0, 0, 0), None
    for i, (body, (top, bottom, left, right)) in enumerate(zip(bodies, boxes(height, width, rows, cols))):
        if not body or body[0] not in _MEMBER_VERSIONS:
            raise CorruptError(f"tile {i} is not a version-2, -3 or -5 member")
        member = MAGIC + body
        member += struct.pack("<I", zlib.crc32(member))
        h, _ = unpack(member, max_work, max_macs)  # every bound of a plain file, per tile
        if h.arch.kind != "deep-decoder":  # the writer never makes one (_check_packable)
            raise CorruptError(f"tile {i} is a {h.arch.kind} net, not a Deep Decoder")
        spent = add_cost(spent, h.arch, h.height, h.width)
        problem = budget_problem(spent, max_work, max_macs)
        if problem:
            raise LimitError(f"decoding tiles 0..{i} takes {problem}")
        if (h.width, h.height) != (right - left, bottom - top):
            raise CorruptError(f"tile {i} is {h.width}x{h.height}, its place in the grid "
                               f"{right - left}x{bottom - top}")
        if h.arch.out_channels != (channels := channels or h.arch.out_channels):  # before any decode
            raise CorruptError(f"tile {i} has {h.arch.out_channels} channels, tile 0 {channels}")
        members.append(member)
    return width, height, rows, cols, members
