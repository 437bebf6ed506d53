"""Tile sizes, one image at a time: encode named Kodak images at one rate with a given tile
(or the auto tile), decode, and append a JSON row (bpp from the file, PSNR on the 8-bit output)
to benchmarks/results/tiles.jsonl. On the CPU a full-size fit takes 11-25 minutes on one thread.

    OMP_NUM_THREADS=1 python -m benchmarks.tiles --data ../shared/data/kodak --names kodim03 \\
        --bpp 0.5 --tile 256x171
"""
import argparse
import json
import time
from pathlib import Path

import torch

import ddcodec
from ddcodec.metrics import psnr

from .common import code_version
from .rd import load_images


def main(argv=None):
    ap = argparse.ArgumentParser(description="ddcodec's tiles at one rate, image by image")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--names", required=True, help="comma-separated image names, e.g. kodim01,kodim03")
    ap.add_argument("--downscale", type=int, default=1, help="1: full size; 2: kodak-half; 4: kodak-mini")
    ap.add_argument("--bpp", type=float, required=True)
    ap.add_argument("--tile", default="auto", help="WxH, auto or none")
    ap.add_argument("--iters", type=int, default=ddcodec.FitConfig.iters, help="fitting iterations")
    ap.add_argument("--optimizer", choices=["auto", "adam", "muon"], default="auto",
                    help="auto: the default (Muon for compression fits)")
    ap.add_argument("--margin", choices=["auto", "on", "off"], default="auto",
                    help="auto: the default (a margin for networks of k >= 9)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tiles.jsonl"))
    a = ap.parse_args(argv)
    images = load_images(a.data, a.downscale, names=a.names.split(","))
    fit = ddcodec.FitConfig(iters=a.iters, optimizer=None if a.optimizer == "auto" else a.optimizer,
                            margin=None if a.margin == "auto" else a.margin == "on")
    for name, img in images.items():
        t0 = time.perf_counter()
        res = ddcodec.encode(img, None, quant=ddcodec.QuantConfig(target_bpp=a.bpp), device=a.device,
                             fit=fit,
                             tile=ddcodec.tiles.tile_for(a.tile, a.bpp))
        meta = ddcodec.info(res.data)
        row = dict(image=name, size=f"{img.shape[1]}x{img.shape[0]}", target_bpp=a.bpp, tile=a.tile,
                   iters=a.iters, optimizer=fit.optimizer_for(), margin=a.margin, grid=meta.get("tiles", [1, 1]), tile_k=meta.get("tile_k", [meta["arch"]["channels"]]),
                   bytes=len(res.data), bpp=8 * len(res.data) / (img.shape[0] * img.shape[1]),
                   psnr=psnr(ddcodec.decode(res.data), img), psnr_float=res.psnr_float, seconds=time.perf_counter() - t0, device=res.device,
                   threads=torch.get_num_threads(), code=code_version(), torch=torch.__version__)
        print(json.dumps(row), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
