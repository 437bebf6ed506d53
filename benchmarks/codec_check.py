"""The figures the codec promises, measured on one image with default settings:
quantization loss, reported vs decoded PSNR, byte-identical re-encode, encode time.

    python -m benchmarks.codec_check IMAGE [-k 16] [--downscale 4] [--out benchmarks/results/codec_check.json]
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ddcodec
from ddcodec.images import read_image
from ddcodec.metrics import psnr

from .common import code_version, run_main, write_json


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("-k", "--channels", type=int, default=16)
    ap.add_argument("--downscale", type=int, default=4, help="Lanczos downscale factor first")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/codec_check.json"))
    a = ap.parse_args(argv)
    img = read_image(a.image)
    if a.downscale > 1:
        h, w = img.shape[:2]
        img = np.asarray(Image.fromarray(img).resize((w // a.downscale, h // a.downscale), Image.LANCZOS))
    first = ddcodec.encode(img, channels=a.channels, device=a.device)
    again = ddcodec.encode(img, channels=a.channels, device=a.device)
    with tempfile.TemporaryDirectory() as d:  # decode from a real file, on the CPU
        f = Path(d) / "x.ddc"
        f.write_bytes(first.data)
        t0 = time.perf_counter()
        decoded = ddcodec.decode(f.read_bytes(), device="cpu")
        decode_s = time.perf_counter() - t0
    row = {"image": a.image.name, "size": f"{img.shape[1]}x{img.shape[0]}", "k": a.channels,
           "defaults": {"fit": ddcodec.FitConfig().__dict__, "quant": ddcodec.QuantConfig().__dict__},
           "device": first.device, "machine": platform.processor() or platform.machine(),
           # an eager fit's bytes depend on the thread count (README, Development): say which
           "threads": torch.get_num_threads(), "code": code_version(), "torch": torch.__version__,
           "encode_seconds": round(first.seconds, 2), "decode_seconds": round(decode_s, 3),
           "bytes": first.bytes, "bpp": round(first.bpp, 4),
           "psnr_float": round(first.psnr_float, 3), "psnr_reported": round(first.psnr, 3),
           "psnr_decoded_cpu": round(psnr(decoded, img), 3),
           "quantization_loss_db": round(first.psnr_float - first.psnr, 3),
           "reencode_byte_identical": first.data == again.data}
    print(json.dumps(row, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, row)


if __name__ == "__main__":
    run_main(main)
