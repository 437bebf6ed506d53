"""The .ddc container: magic, version, header, payload, CRC-32. docs/format.md has the layout.

The reader checks the magic, the version, every length and bound, and the CRC before it
allocates anything the header asks for or calls the entropy decoder: constriction does not
detect corruption, so the CRC and the explicit symbol count are what do.
"""
import struct
import zlib
from dataclasses import dataclass

from .entropy import DECAYS, TensorModel, decay_index
from .errors import (ConfigError, CorruptError, FormatError, LimitError, NotDDCError,
                     TruncatedError, UnsupportedVersionError)
from .nets import Architecture, macs, tensor_shapes, work
from .quant import STEP_CODE_MAX, STEP_CODE_MIN

MAGIC = b"\x89DDC"
VERSION = 5  # the newest version written (files without its features are written as 3 or 2)
READABLE = (1, 2, 3, 5)
TILED_VERSION = 4  # a grid of version-2/3/5 members (ddcodec.tiles)
# header kind -> (Architecture.kind, folded); the folded Deep Decoder is new in version 3
KINDS = (("deep-decoder", False), ("skip", False), ("deep-decoder", True))
KINDS_IN = {1: 2, 2: 2, 3: 3, 5: 3}  # version -> how many of KINDS it may use
MAX_PIXELS = 1 << 26  # 67 Mpx, e.g. 8192 x 8192; a header asking more is refused unread
MAX_SIDE = 1 << 16
# k * pixels: the largest activation, e.g. k=64 at 2048^2. The exact decode works in float64 and
# holds a block's input and output at once: k=64 at 2048^2 (a 1x1 image at 12 blocks) decoded
# in 15.4 s on a 2-core CPU, the process peaking at 5.0 GB.
MAX_WORK = 1 << 28
# Multiply-adds of one decode (nets.macs): the bound on its time, which work does not give (a
# block's product costs k^2 a pixel). 2^37 admits the largest file the encoder fits at its
# defaults and beyond: the skip net at k=128 on a 768x512 image is 116 G (32.9 s and 3.1 GB to
# decode on a 2-core CPU), k=64 at 2048^2 24 G. It refuses a 35-byte header at k=1024, 512x512
# (276 G, 34 s). A tiled file's members share one budget: else 4096 small members would each
# take the whole of it.
MAX_MACS = 1 << 37
MAX_SYMBOLS = 1 << 26
FLAG_TRANSPOSED = 1  # the network was fitted to the transposed image (portrait in a bank)
_KNOWN_FLAGS = FLAG_TRANSPOSED  # what Header.flags may hold
# On the wire only (version 5): the image is the centre of a canvas with a margin
# (Architecture.margin), which the reader puts in header.arch, not in header.flags.
FLAG_MARGIN = 2
_MIN_SIZE = len(MAGIC) + 1 + 4
_VARINT_BYTES = 10  # the longest varint the reader takes: 70 bits


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    arch: Architecture
    seed: int
    step_codes: tuple  # one signed step code per tensor (quant.step_from_code)
    models: tuple  # one entropy.TensorModel per tensor
    flags: int = 0

    @property
    def symbols(self) -> int:
        return sum(_numel(s) for _, s in tensor_shapes(self.arch))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _uvarint(n: int) -> bytes:
    # a negative n never shifts down to 0: the loop below would grow without end; and the
    # reader takes at most _VARINT_BYTES bytes of 7 bits
    if not 0 <= n < 1 << (7 * _VARINT_BYTES):
        raise ConfigError(f"{n} cannot be stored as an unsigned varint")
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _svarint(n: int) -> bytes:
    return _uvarint(2 * n if n >= 0 else -2 * n - 1)  # zigzag


def pack(h: Header, payload: bytes) -> bytes:
    """Header + payload -> the bytes of a .ddc file: version 5 (version 3 plus FLAG_MARGIN)
    for a Deep Decoder with a margin, version 3 (version 2's layout plus the folded Deep
    Decoder as architecture kind 2) for a folded one without, else version 2.

    Version 2 spends ~5 bytes per tensor where version 1 spent ~9 (a one-byte step code and
    decay index, the range as offsets from the centre) and drops fields the architecture or
    the file length already give. At small sizes the header was up to 40 % of the file."""
    _check_writable(h)
    if len(payload) % 4:
        raise ConfigError(f"a payload of {len(payload)} bytes: the range coder writes 32-bit words")
    # the newer versions only where they are needed, so that older readers still open the
    # files they can decode (version-2 readers skip-net files, version-3 readers files without a margin)
    out = bytearray(MAGIC) + bytes([VERSION if h.arch.margin else 3 if h.arch.folded else 2])
    flags = h.flags | (FLAG_MARGIN if h.arch.margin else 0)
    for v in (h.width, h.height, h.arch.out_channels, flags, KINDS.index((h.arch.kind, h.arch.folded)),
              h.arch.channels, h.arch.layers, h.seed):
        out += _uvarint(v)
    for code, m in zip(h.step_codes, h.models):
        out += _tensor_entry(code, m)
    out += payload  # its length is what remains before the CRC
    return bytes(out) + struct.pack("<I", zlib.crc32(out))


def _check_writable(h: Header) -> None:
    """Refuse a header the reader would take for corruption: the writer must not make a file
    that reads back as damaged. (Sizes over the reader's limits are LimitErrors there, and the
    encoder refuses those before its fit.)"""
    if h.width < 1 or h.height < 1:
        raise ConfigError(f"image size {h.width}x{h.height} cannot be stored")
    if not 0 <= h.seed < 1 << 64:
        raise ConfigError(f"seed {h.seed} cannot be stored (0 <= seed < 2^64)")
    if h.flags & ~_KNOWN_FLAGS or h.flags < 0:
        raise ConfigError(f"flags {h.flags} cannot be stored")
    if len(h.step_codes) != len(h.models) or len(h.models) != len(tensor_shapes(h.arch)):
        raise ConfigError(f"{len(h.step_codes)} step codes and {len(h.models)} models for "
                          f"{len(tensor_shapes(h.arch))} tensors")
    for m in h.models:
        try:
            m.validate()  # the reader's own check of each model
        except CorruptError as e:
            raise ConfigError(f"entropy model cannot be stored: {e}") from None


def _tensor_entry(code: int, m: TensorModel) -> bytes:
    if not STEP_CODE_MIN <= code <= STEP_CODE_MAX:  # what the reader accepts
        raise ConfigError(f"step code {code} cannot be stored")
    return (bytes([int(code) - STEP_CODE_MIN, decay_index(m)]) + _svarint(m.mu)
            + _uvarint(m.mu - m.lo) + _uvarint(m.hi - m.mu))


class _Reader:
    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def uvarint(self, what: str) -> int:
        n = shift = 0
        for _ in range(_VARINT_BYTES):
            if self.pos >= self.end:
                raise TruncatedError(f"truncated: header ends inside {what}")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
        raise CorruptError(f"varint too long in {what}")

    def svarint(self, what: str) -> int:
        z = self.uvarint(what)
        return z >> 1 if not z & 1 else -((z + 1) >> 1)

    def fixed(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise TruncatedError(f"truncated: header ends inside {what}")
        self.pos += n
        return self.data[self.pos - n:self.pos]


def unpack(data: bytes, max_work: int = MAX_WORK, max_macs: int = MAX_MACS):
    """Bytes of a .ddc file -> (Header, payload). Raises a FormatError subclass on bad input.
    max_work bounds k * pixels, i.e. the memory a decode of this header would need, and
    max_macs its multiply-adds, i.e. its time."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data[:len(MAGIC)]):
            raise TruncatedError(f"truncated: {len(data)} bytes is shorter than a .ddc header")
        raise NotDDCError("not a DDC file (wrong magic bytes)")
    if len(data) < _MIN_SIZE:
        raise TruncatedError(f"truncated: {len(data)} bytes is shorter than a .ddc header")
    if data[4] == TILED_VERSION:  # ddcodec.tiles reads it, and hands each member to this
        raise UnsupportedVersionError("a tiled .ddc file (version 4) holds a grid of networks, not one: "
                                      "decode() reads it")
    if data[4] not in READABLE:
        raise UnsupportedVersionError(f"unsupported .ddc version {data[4]} (this reader: "
                                      f"{', '.join(map(str, sorted(READABLE + (TILED_VERSION,))))})")
    r = _Reader(data, 5, len(data) - 4)
    try:
        h, payload_len = _read_header(r, max_work, max_macs, data[4])
    except TruncatedError:
        if zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]:
            raise CorruptError("header runs past the end of the file")
        raise
    expected = r.pos + payload_len + 4
    if len(data) < expected:
        raise TruncatedError(f"truncated: expected {expected} bytes, got {len(data)}")
    if len(data) > expected:
        raise CorruptError(f"{len(data) - expected} unexpected bytes after the payload")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CorruptError("CRC mismatch: the file is corrupted")
    if payload_len % 4:  # the range coder's 32-bit words; checked here so that info() agrees with decode()
        raise CorruptError("payload length is not a multiple of 4")
    for m in h.models:
        m.validate()
    return h, data[r.pos:r.pos + payload_len]


def _read_header(r: _Reader, max_work: int, max_macs: int, version: int):
    width, height = r.uvarint("width"), r.uvarint("height")
    channels, flags, kind = r.uvarint("channels"), r.uvarint("flags"), r.uvarint("kind")
    k, layers = r.uvarint("k"), r.uvarint("layers")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE and width * height <= MAX_PIXELS):
        raise LimitError(f"image size {width}x{height} exceeds the reader's limits")
    known = _KNOWN_FLAGS | (FLAG_MARGIN if version >= 5 else 0)
    if flags & ~known or kind >= KINDS_IN[version]:
        raise CorruptError(f"unknown flags {flags} or architecture {kind}")
    margin, flags = bool(flags & FLAG_MARGIN), flags & ~FLAG_MARGIN
    try:
        arch = Architecture(KINDS[kind][0], k, layers, channels, folded=KINDS[kind][1], margin=margin)
    except ConfigError as e:
        raise CorruptError(f"bad architecture in header: {e}") from None
    if work(arch, height, width) > max_work or macs(arch, height, width) > max_macs:
        raise LimitError(f"decoding {width}x{height} at k={k} with {layers} blocks exceeds the reader's limits")
    shapes = tensor_shapes(arch)
    if sum(_numel(s) for _, s in shapes) > MAX_SYMBOLS:
        raise LimitError(f"{arch.kind} at k={k} has more weights than the reader's limit {MAX_SYMBOLS}")
    if version >= 2:  # version 3 differs only in the kinds it allows
        return _read_v2(r, width, height, arch, flags, shapes)
    seed = struct.unpack("<Q", r.fixed(8, "seed"))[0]
    count = r.uvarint("tensor count")
    if count != len(shapes):
        raise CorruptError(f"header lists {count} tensors, the architecture has {len(shapes)}")
    codes, models = [], []
    for name, _ in shapes:
        codes.append(r.svarint(name))
        if not STEP_CODE_MIN <= codes[-1] <= STEP_CODE_MAX:
            raise CorruptError(f"step code {codes[-1]} of {name} out of range")
        lo = r.svarint(name)
        hi = lo + r.uvarint(name)
        mu = lo + r.uvarint(name)
        models.append(TensorModel(lo, hi, mu, r.uvarint(name)))
    h = Header(width, height, arch, seed, tuple(codes), tuple(models), flags)
    symbols = r.uvarint("symbol count")
    if symbols > MAX_SYMBOLS or symbols != h.symbols:
        raise CorruptError(f"symbol count {symbols} does not match the architecture ({h.symbols})")
    return h, r.uvarint("payload length")


def _read_v2(r: _Reader, width, height, arch, flags, shapes):
    seed = r.uvarint("seed")
    if seed >= 1 << 64:
        raise CorruptError("seed out of range")
    codes, models = [], []
    for name, _ in shapes:
        code, decay = r.fixed(2, name)
        codes.append(code + STEP_CODE_MIN)
        if codes[-1] > STEP_CODE_MAX:
            raise CorruptError(f"step code {codes[-1]} of {name} out of range")
        if decay >= len(DECAYS):
            raise CorruptError(f"decay index {decay} of {name} out of range")
        mu = r.svarint(name)
        lo = mu - r.uvarint(name)
        models.append(TensorModel(lo, mu + r.uvarint(name), mu, int(DECAYS[decay])))
    return Header(width, height, arch, seed, tuple(codes), tuple(models), flags), r.end - r.pos


__all__ = ["Header", "pack", "unpack", "FormatError", "MAGIC", "VERSION", "READABLE"]
