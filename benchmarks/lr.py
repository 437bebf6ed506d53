"""The fitting learning rate at one width, on centre crops of the dataset's images.

`fit.default_lr` is 0.05 up to k = 21 and 0.01 from k = 64, measured at both ends; between
them it interpolates log-linearly, unmeasured. Full-size images are coded as tiles of about
256x171 whose k falls there (24-39 at 1.0 bpp), so this fits centre crops of that size in one
bank under rate control, once per learning rate, and compares PSNR at the bytes written.

    python -m benchmarks.lr --names kodim01,kodim03,kodim05,kodim07 --bpp 1.0 --lr rule --lr 0.05

Portrait images are transposed first, as the codec does. Rows go to benchmarks/results/lr.jsonl.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import ddcodec
from ddcodec.fit import default_lr
from ddcodec.quant import QuantConfig

from .common import code_version
from .rd import load_images


def centre_crops(images: dict, width: int, height: int) -> dict:
    out = {}
    for name, im in images.items():
        if im.shape[0] > im.shape[1]:
            im = im.swapaxes(0, 1)
        t, l = (im.shape[0] - height) // 2, (im.shape[1] - width) // 2
        if t < 0 or l < 0:
            raise SystemExit(f"{name} is smaller than the crop")
        out[name] = np.ascontiguousarray(im[t:t + height, l:l + width])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="learning rate at one width, on centre crops")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--names", required=True, help="comma-separated image names: one bank")
    ap.add_argument("--crop", default="256x171", help="WxH: the auto tile of a 768x512 image")
    ap.add_argument("--bpp", type=float, default=1.0)
    ap.add_argument("--lr", action="append", required=True, help="'rule' (fit.default_lr) or a number; repeatable")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lr.jsonl"))
    a = ap.parse_args(argv)
    width, height = (int(v) for v in a.crop.lower().split("x"))
    crops = centre_crops(load_images(a.data, 1, names=a.names.split(",")), width, height)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for lr in a.lr:
        fit = ddcodec.FitConfig(lr=None if lr == "rule" else float(lr))
        t0 = time.perf_counter()
        res = ddcodec.encode_bank(list(crops.values()), channels=None, quant=QuantConfig(target_bpp=a.bpp),
                                  fit=fit, device="cpu", tile=None)
        seconds = time.perf_counter() - t0
        with open(a.out, "a") as f:
            for name, r in zip(crops, res):
                k = ddcodec.info(r.data)["arch"]["channels"]
                row = {"image": name, "crop": f"{width}x{height}", "target_bpp": a.bpp, "lr": lr,
                       "lr_used": fit.lr_for(k), "rule_lr": default_lr(k), "k": k, "bytes": r.bytes,
                       "bpp": r.bpp, "psnr": r.psnr, "bank_seconds": seconds, "code": code_version(), "torch": torch.__version__}
                f.write(json.dumps(row) + "\n")
                print(f"{name} lr {lr} (k={k}, {row['lr_used']:.4f}): {r.psnr:.2f} dB at {r.bpp:.4f} bpp", flush=True)


if __name__ == "__main__":
    main()
