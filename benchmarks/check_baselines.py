"""Sanity check of the classical baselines: sweep every codec over a folder of images and print
mean PSNR-RGB at 0.25 / 0.5 / 1.0 bpp, to compare with known figures before trusting the curves.

    python -m benchmarks.check_baselines DATASET_DIR [--downscale 4] [--limit N] --out FILE.json
"""
import argparse
import json
import time
from pathlib import Path

from PIL import Image

from benchmarks.baselines import CODECS, check_codec, compressai_json, sweep
from ddcodec.images import from_pil

TARGETS = (0.25, 0.5, 1.0)


def load(path: Path, downscale: int):
    with Image.open(path) as im:
        im.load()
        # box-filter reduction: a fixed, parameter-free way to make small test images
        return from_pil(im.reduce(downscale) if downscale > 1 else im)


def _nan_to_null(x):
    # strict JSON has no NaN; NaN here means "not measured / not reached"
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_null(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import torch  # MS-SSIM runs in torch: one thread, as oversubscribed cores make it ~10x slower

    torch.set_num_threads(1)
    codecs = args.codecs.split(",")
    for c in codecs:
        check_codec(c)  # fail before any work, not after an hour of sweeping
    paths = sorted(p for p in args.dataset.iterdir() if p.suffix.lower() == ".png")[: args.limit]
    images = {p.stem: load(p, args.downscale) for p in paths}
    report = {"dataset": str(args.dataset), "downscale": args.downscale, "images": list(images),
              "codecs": {}}
    print(f"{len(images)} images, downscale {args.downscale}; PSNR-RGB (dB) at bpp "
          + " / ".join(map(str, TARGETS)) + ", per-image interpolation then mean")
    for codec in codecs:
        t0 = time.perf_counter()
        rows = {name: sweep(codec, img) for name, img in images.items()}
        res = compressai_json(codec, f"Pillow {codec}, check_baselines", rows, TARGETS)
        report["codecs"][codec] = res
        per_image, mean_curve = (" / ".join(f"{v:5.2f}" for v in res[k].values())
                                 for k in ("psnr_at_bpp", "psnr_at_bpp_mean_curve"))
        print(f"{codec:9s} {per_image}   (mean curve: {mean_curve})   "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_nan_to_null(report), indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
