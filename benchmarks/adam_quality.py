"""Fused against plain Adam in quality: the float PSNR of the default 3,000-step fit of one
bank, from the same start, with eager kernels (benchmarks/adam.py times the two forms).

    OMP_NUM_THREADS=1 python -m benchmarks.adam_quality --form fused --names kodim01,kodim02
    OMP_NUM_THREADS=1 python -m benchmarks.adam_quality --form plain --names kodim01,kodim02

Portrait images are transposed (as the codec does). One JSON line per run is appended to
benchmarks/results/adam_quality_cpu.jsonl.

    python -m benchmarks.adam_quality --summary

pairs the two forms' fits of each image (the latest run of each) and prints, per k, fused
minus plain in dB: the mean, its standard error, and how many images the fused form lost.
"""
import argparse
import json
import statistics
from contextlib import nullcontext
from pathlib import Path

import torch

from ddcodec.fit import FitConfig, optimise, psnr_from_mse
from ddcodec.nets import build

from .adam import adam_of, plain_adam
from .common import code_version
from .rd import load_images
from .speed import _bank


def main(argv=None):
    ap = argparse.ArgumentParser(description="fused against plain Adam: float PSNR of one fit")
    ap.add_argument("--form", choices=["fused", "plain"])
    ap.add_argument("--names", help="comma-separated image names: one bank")
    ap.add_argument("--summary", action="store_true", help="print the paired differences on file")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    if a.summary:
        rows = [json.loads(line) for line in open(a.out / "adam_quality_cpu.jsonl")]
        for key, d in [*summary(rows).items(), *summary(rows, pool=True).items()]:
            print("k={} downscale={} threads={}: {images} fits, fused - plain {mean:+.3f} dB (standard error "
                  "{stderr:.3f}, {min:+.3f} to {max:+.3f}), fused lower on {fused_lower}".format(*key, **d))
        return
    if not (a.form and a.names):
        ap.error("--form and --names are required unless --summary")
    names = a.names.split(",")
    ims = load_images(a.data, a.downscale, names=names)
    land = [ims[n] if ims[n].shape[0] < ims[n].shape[1] else ims[n].transpose(1, 0, 2) for n in names]
    arch, seeds, z, loss, _ = _bank(land, a.k, torch.device("cpu"))
    recipe = FitConfig()
    model = build(arch, seeds, recipe.live_first_block_for(True, a.k, z.shape[2] * z.shape[3]))
    # Adam alone, in either form: Muon (the recipe's since) steps the matrices without it
    schedule = dict(recipe.schedule(a.k), optimizer="adam")
    with adam_of(plain_adam) if a.form == "plain" else nullcontext():
        best = optimise(model, z, loss, recipe.iters, **schedule, compile=False)
    row = {"form": a.form, "k": a.k, "downscale": a.downscale, "threads": torch.get_num_threads(), "code": code_version(), "torch": torch.__version__,
           "psnr": dict(zip(names, [round(float(p), 4) for p in psnr_from_mse(best)]))}
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "adam_quality_cpu.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def summary(rows, pool: bool = False) -> dict:
    """{(k, downscale, threads): {"images", "mean", "stderr", "fused_lower", "min", "max"}}
    of fused minus plain PSNR over the images both forms fitted (a later row of the same form
    and image replaces an earlier one). pool: every k's fits in one entry, k = "all"."""
    latest = {}
    for r in rows:
        for name, p in r["psnr"].items():
            latest[(r["k"], r["downscale"], r["threads"], name, r["form"])] = p
    diffs = {}
    for (k, down, threads, name, form), p in latest.items():
        other = latest.get((k, down, threads, name, "plain"))
        if form == "fused" and other is not None:
            diffs.setdefault(("all" if pool else k, down, threads), []).append(p - other)
    return {key: _stats(d) for key, d in sorted(diffs.items())}  # k: all ints, or all "all"


def _stats(d) -> dict:
    return {"images": len(d), "mean": statistics.fmean(d),
            "stderr": statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan"),
            "fused_lower": sum(x < 0 for x in d), "min": min(d), "max": max(d)}


if __name__ == "__main__":
    main()
