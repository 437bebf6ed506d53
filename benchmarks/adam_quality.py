"""Fused against plain Adam in quality: the float PSNR of the default 3,000-step fit of one
bank, from the same start, with eager kernels (benchmarks/adam.py times the two forms).

    OMP_NUM_THREADS=1 python -m benchmarks.adam_quality --form fused --names kodim01,kodim02
    OMP_NUM_THREADS=1 python -m benchmarks.adam_quality --form plain --names kodim01,kodim02

Portrait images are transposed (as the codec does). One JSON line per run is appended to
benchmarks/results/adam_quality_cpu.jsonl.
"""
import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch

from ddcodec.fit import FitConfig, optimise, psnr_from_mse
from ddcodec.nets import build

from .adam import adam_of, plain_adam
from .rd import load_images
from .speed import _bank


def main(argv=None):
    ap = argparse.ArgumentParser(description="fused against plain Adam: float PSNR of one fit")
    ap.add_argument("--form", choices=["fused", "plain"], required=True)
    ap.add_argument("--names", required=True, help="comma-separated image names: one bank")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    names = a.names.split(",")
    ims = load_images(a.data, a.downscale, names=names)
    land = [ims[n] if ims[n].shape[0] < ims[n].shape[1] else ims[n].transpose(1, 0, 2) for n in names]
    arch, seeds, z, loss, _ = _bank(land, a.k, torch.device("cpu"))
    recipe = FitConfig()
    model = build(arch, seeds, recipe.live_first_block_for(True, a.k, z.shape[2] * z.shape[3]))
    with adam_of(plain_adam) if a.form == "plain" else nullcontext():
        best = optimise(model, z, loss, recipe.iters, **recipe.schedule(a.k), compile=False)
    row = {"form": a.form, "k": a.k, "downscale": a.downscale, "threads": torch.get_num_threads(),
           "psnr": dict(zip(names, [round(float(p), 4) for p in psnr_from_mse(best)]))}
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "adam_quality_cpu.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
