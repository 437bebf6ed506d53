"""decode(): .ddc bytes -> the image, the same pixels on every machine and device.

    decode:  .ddc -> integers * steps -> network, z = noise(seed) -> exact forward pass -> image

The reader (bitstream.unpack) bounds everything a header asks for before any of it is
allocated; the integers are then exact everywhere, and ddcodec.exact renders the network
without float-order effects, so the pixels do not depend on the BLAS, the thread count or the
device (docs/format.md).
"""
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import bitstream, entropy, exact, tiles
from .checks import integer
from .errors import ConfigError, LimitError, ReadError, out_of_memory
from .metrics import bpp as bits_per_pixel
from .nets import build, crop, param_count, seeded_input, tensor_shapes
from .quant import dequantize, step_from_code, steps_tensor


def resolve_device(device: str = "auto") -> torch.device:
    if not isinstance(device, str):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but no CUDA GPU is available")
    return torch.device(device)


def _unorient(img: np.ndarray, flags: int) -> np.ndarray:
    return np.ascontiguousarray(img.swapaxes(0, 1)) if flags & bitstream.FLAG_TRANSPOSED else img


def decode(data: bytes, device: str = "cpu", max_work: int = bitstream.MAX_WORK,
           max_macs: int = bitstream.MAX_MACS) -> np.ndarray:
    """.ddc bytes -> uint8 image [H, W, 3] or [H, W]. Raises a FormatError on bad data, and
    MemoryError when the machine cannot hold the decode. max_work (k * pixels) bounds the
    memory the decode may need and max_macs (nets.macs) its multiply-adds, a tiled file's
    members together; larger headers are refused."""
    data = _file_bytes(data)
    integer("max_work", max_work, 1, 2**62)
    integer("max_macs", max_macs, 1, 2**62)
    if tiles.is_tiled(data):
        width, height, rows, cols, members = tiles.unpack_members(data, max_work, max_macs)
        return tiles.merge([decode(m, device, max_work, max_macs) for m in members], height, width, rows, cols)
    header, ints = _parse(data, max_work, max_macs)
    dev = resolve_device(device)
    h, w = header.height, header.width
    if header.flags & bitstream.FLAG_TRANSPOSED:
        h, w = w, h
    z = seeded_input(header.arch, h, w, header.seed)
    steps = [float(s) for s in step_from_code(np.asarray(header.step_codes))]
    render = exact.render if header.arch.kind == "deep-decoder" else exact.render_skip
    try:
        with torch.no_grad():  # the same pixels on every machine and device (ddcodec.exact)
            levels = crop(header.arch, render(header.arch, ints, steps, z.to(dev)), h, w).permute(1, 2, 0).cpu().numpy()
    except RuntimeError as e:  # torch's allocators say so in a RuntimeError: Python's own type is MemoryError
        if not out_of_memory(e):
            raise
        raise MemoryError(f"decoding {header.width}x{header.height} at k={header.arch.channels} "
                          f"needs more memory than {dev.type} has") from None
    out = levels[..., 0] if levels.shape[-1] == 1 else levels
    return _unorient(np.ascontiguousarray(out), header.flags)


def _parse(data: bytes, max_work: int, max_macs: int = bitstream.MAX_MACS):
    """.ddc bytes -> (Header, the integer tensors in file order). Exact on every machine."""
    header, payload = bitstream.unpack(data, max_work, max_macs)
    shapes = [s for _, s in tensor_shapes(header.arch)]
    ints = entropy.decode(payload, header.models, [int(np.prod(s)) for s in shapes])
    return header, [q.reshape(s) for q, s in zip(ints, shapes)]


def load_model(data: bytes, max_work: int = bitstream.MAX_WORK):
    """.ddc bytes -> (Header, the network with the float32 dequantized weights), on the CPU.
    Parsing and dequantization are exact: the weights are bit-identical on every machine.
    (decode() renders the Deep Decoder with ddcodec.exact, not with this network.)
    The network's output is the image as fitted: with header.flags & bitstream.FLAG_TRANSPOSED
    (info()'s "transposed") that is the image turned, [W, H] (nets.seeded_input for that size, then .mT).
    The output is the network's whole canvas: nets.crop(header.arch, out, h, w) takes the image from it."""
    data = _file_bytes(data)
    integer("max_work", max_work, 1, 2**62)
    header, ints = _parse(data, max_work)
    return header, _with_weights(header, ints)


def _with_weights(header, ints: list):
    shapes = [s for _, s in tensor_shapes(header.arch)]
    steps = steps_tensor(np.asarray(header.step_codes)[:, None], torch.device("cpu"))
    model = build(header.arch, (header.seed,))
    with torch.no_grad():
        for (_, t), q, s, shape in zip(model.named_tensors(), ints, steps, shapes):
            t.copy_(dequantize(torch.from_numpy(q.astype(np.float32)).view(1, *shape), s))
    return model


# No file the reader takes is larger: at most 2^26 weights (MAX_SYMBOLS, a tiled file's members
# together), each under 24 bits in the range coder's leaky 24-bit probabilities, plus headers.
MAX_FILE_BYTES = 1 << 28


def read_file(path) -> bytes:
    """The bytes of the .ddc file at path. A file larger than any the reader takes is refused
    after MAX_FILE_BYTES + 1 bytes, not read to its end: `ddc info /dev/zero` would never end."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ReadError(f"{path}: {e.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise LimitError(f"{path}: larger than any .ddc file the reader takes ({MAX_FILE_BYTES} bytes)")
    return data


def _file_bytes(data) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigError(f"expected the bytes of a .ddc file, got {type(data).__name__}"
                          + (" (for a path, pass its bytes: Path(p).read_bytes(); decode_file decodes a file to an image file)" if isinstance(data, (str, Path)) else ""))
    return bytes(data)


def info(data: bytes) -> dict:
    """The header of a .ddc file as a dict (validated, payload not decoded)."""
    data = _file_bytes(data)
    if tiles.is_tiled(data):
        width, height, rows, cols, members = tiles.unpack_members(data, bitstream.MAX_WORK)
        parts = [info(m) for m in members]
        return {"version": data[4], "width": width, "height": height, "tiles": [cols, rows],
                "channels": parts[0]["channels"], "arch": parts[0]["arch"], "seed": parts[0]["seed"],
                "params": sum(p["params"] for p in parts), "bytes": len(data),
                "payload_bytes": sum(p["payload_bytes"] for p in parts),
                "header_bytes": len(data) - 4 - sum(p["payload_bytes"] for p in parts),
                "bpp": bits_per_pixel(len(data), width, height), "tile_k": [p["arch"]["channels"] for p in parts],
                "tile_transposed": [p["transposed"] for p in parts]}
    h, payload = bitstream.unpack(data)
    return {"version": data[4], "width": h.width, "height": h.height,
            "channels": h.arch.out_channels, "arch": asdict(h.arch), "seed": h.seed,
            "params": param_count(h.arch), "bytes": len(data), "payload_bytes": len(payload),
            "header_bytes": len(data) - len(payload) - 4, "bpp": bits_per_pixel(len(data), h.width, h.height),
            "step_codes": list(h.step_codes),
            "transposed": bool(h.flags & bitstream.FLAG_TRANSPOSED)}  # fitted turned: load_model's output is [W, H]
