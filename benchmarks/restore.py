"""Restoration benchmark: Deep Decoder and DIP skip net against untrained baselines.

    python -m benchmarks.restore --profile kodak-mini --data ../shared/data/kodak --images 6
    ddc bench restore --profile kodak-mini

Synthetic degradations of Kodak images (seeded): Gaussian noise sigma 25 and 50 (0-255 scale),
50 % of pixels missing at random, a text overlay, and x4 Lanczos downscaling. Scores are PSNR
and SSIM of the 8-bit result against the clean image. Rows go to
benchmarks/results/<profile>/restore_rows.jsonl as they are made (a re-run resumes); the
summary is restore.json, restore_table.md and one image strip per task.
"""
import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ddcodec import restore
from ddcodec.errors import ConfigError
from ddcodec.metrics import psnr

from .common import code_version, run_main, write_json
from .rd import PROFILES, load_images

TASKS = ("noise25", "noise50", "missing50", "text", "sr4")
BASELINES = {"noise25": ("tv", "bm3d"), "noise50": ("tv", "bm3d"), "missing50": ("biharmonic",),
             "text": ("biharmonic",), "sr4": ("bicubic", "lanczos")}
# --margin: the Deep Decoder fitted as the centre of a larger canvas (restore's margin=True),
# its rows under a name of their own beside the corner's
MARGIN_SUFFIX = "+margin"
MARGIN_METHOD = "deep-decoder" + MARGIN_SUFFIX
TUNING_IMAGE = "kodim24"  # TV's weight is tuned here once; the benchmark uses other images
TV_WEIGHTS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3)


def degrade(task: str, img: np.ndarray, seed: int):
    """-> (degraded image, mask of known pixels or None)."""
    rng = np.random.default_rng(seed)
    if task.startswith("noise"):
        sigma = float(task[5:])
        return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8), None
    if task == "missing50":
        known = rng.random(img.shape[:2]) >= 0.5
    elif task == "text":
        known = text_mask(img.shape[:2])
    else:
        h, w = img.shape[:2]
        return np.asarray(Image.fromarray(img).resize((w // 4, h // 4), Image.LANCZOS)), None
    out = img.copy()
    out[~known] = 0
    return out, known


def text_mask(shape) -> np.ndarray:
    """True where known: lines of text drawn over the image, as in DIP's text-inpainting task."""
    h, w = shape
    m = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(m)
    size = max(8, h // 12)
    font = ImageFont.load_default(size=size)
    for i, y in enumerate(range(2, h, int(size * 1.8))):
        d.text((2 - 7 * (i % 3), y), "deep image prior restores this line " * 3, fill=0, font=font)
    return np.asarray(m) >= 128


def run_method(method, task, degraded, known, img, args, tv_weight):
    from skimage.restoration import denoise_tv_chambolle, inpaint_biharmonic
    h, w = img.shape[:2]
    if method in ("deep-decoder", "skip", MARGIN_METHOD):
        arch = method.removesuffix(MARGIN_SUFFIX)
        kw = dict(arch=arch, device=args.device, iters=args.iters or None, margin=method == MARGIN_METHOD,
                  channels=args.channels if arch == "deep-decoder" else None)
        if task.startswith("noise"):
            return restore.denoise(degraded, **kw)
        if task == "sr4":
            return restore.superres(degraded, 4, **kw).image
        return restore.inpaint(degraded, (known * 255).astype(np.uint8), **kw)
    if method == "tv":
        return _u8(denoise_tv_chambolle(degraded / 255.0, weight=tv_weight, channel_axis=_axis(degraded)))
    if method == "bm3d":
        import bm3d
        return _u8(bm3d.bm3d(degraded / 255.0, sigma_psd=float(task[5:]) / 255))
    if method == "biharmonic":
        return _u8(inpaint_biharmonic(degraded / 255.0, ~known, channel_axis=_axis(degraded)))
    resample = Image.BICUBIC if method == "bicubic" else Image.LANCZOS
    return np.asarray(Image.fromarray(degraded).resize((w, h), resample))


def _axis(img: np.ndarray):
    """scikit-image's channel axis: none for a grey image, whose columns are not channels."""
    return -1 if img.ndim == 3 else None


def _u8(x):
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def ssim(a, b) -> float:
    from skimage.metrics import structural_similarity
    return float(structural_similarity(a, b, channel_axis=_axis(a), data_range=255))


def tune_tv(data: Path, downscale: int, sigma: int, name: str = TUNING_IMAGE) -> float:
    """TV's one free parameter, picked on the tuning image only (as the issue asks)."""
    from skimage.restoration import denoise_tv_chambolle
    img = load_images(data, downscale, names=[name])[name]
    noisy, _ = degrade(f"noise{sigma}", img, seed=999)
    scores = {wt: psnr(_u8(denoise_tv_chambolle(noisy / 255.0, weight=wt, channel_axis=_axis(noisy))), img)
              for wt in TV_WEIGHTS}
    return max(scores, key=scores.get)


def _slug(method: str) -> str:
    """A file-name-safe form of a method name: "deep-decoder (network only)" -> "deep-decoder-network-only"."""
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def _rows(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def main(argv=None):
    ap = argparse.ArgumentParser(description="Restoration benchmark")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="kodak-mini")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--images", type=int, default=6, help="first N images (0: all but the tuning image)")
    ap.add_argument("--skip-images", type=int, default=1, help="images the DIP skip net runs on (it is slow on a CPU)")
    ap.add_argument("--skip-tasks", default=",".join(TASKS), help="tasks the DIP skip net runs (default: all of --tasks)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--channels", type=int, default=None, help="Deep Decoder k (default: by image size)")
    ap.add_argument("--iters", type=int, default=0, help="override the per-task iteration defaults")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tuning-image", default=TUNING_IMAGE,
                    help="the image TV's weight is tuned on, left out of the benchmark (a name in --data)")
    ap.add_argument("--margin", action="store_true",
                    help=f"run the Deep Decoder with the margin, as the method {MARGIN_METHOD!r}")
    ap.add_argument("--summary-only", action="store_true", help="summarise the rows already made")
    a = ap.parse_args(argv)
    if unknown := [t for t in a.tasks.split(",") + a.skip_tasks.split(",") if t and t not in TASKS]:  # "": none
        raise ConfigError(f"unknown task {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
    down = PROFILES[a.profile]
    if not (a.data / f"{a.tuning_image}.png").is_file():
        raise ConfigError(f"{a.data} has no {a.tuning_image}.png to tune TV's weight on: add it, or name "
                          "another image of the folder with --tuning-image (it is then left out of the benchmark)")
    images = {n: im for n, im in load_images(a.data, down).items() if n != a.tuning_image}
    images = dict(list(images.items())[: a.images or None])
    out_dir = a.out / a.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_file = out_dir / "restore_rows.jsonl"
    done = {(r["task"], r["image"], r["method"]) for r in _rows(rows_file)}
    tv = {s: tune_tv(a.data, down, s, a.tuning_image) for s in (25, 50)}
    for task in ([] if a.summary_only else a.tasks.split(",")):
        for i, (name, img) in enumerate(images.items()):
            if task == "sr4":  # the truth at a multiple of 4: the low-resolution input is a quarter of it
                img = img[:img.shape[0] // 4 * 4, :img.shape[1] // 4 * 4]
            degraded, known = degrade(task, img, seed=i)
            skip = i < a.skip_images and task in a.skip_tasks.split(",")
            methods = (MARGIN_METHOD if a.margin else "deep-decoder",) + (("skip",) if skip else ()) + BASELINES[task]
            for method in methods:
                if (task, name, method) in done:
                    continue
                t0 = time.perf_counter()
                out = run_method(method, task, degraded, known, img, a, tv.get(int(task[5:]) if task.startswith("noise") else 0))
                outs, extra = {method: out}, {}
                if isinstance(out, restore.Restored):  # the restored image, and what its .ddc decodes to
                    extra = dict(iters=out.iters)  # the stopping rule's choice, for denoising
                    # (inpainting keeps the known pixels, the network alone fills all of them;
                    # denoising returns the averaged output, the .ddc holds it distilled)
                    label = "network only" if task in ("missing50", "text") else ".ddc"
                    outs = {method: out.image, f"{method} ({label})": restore.decode(out.result.data)}
                for m, o in outs.items():
                    row = dict(task=task, image=name, method=m, psnr=psnr(o, img), ssim=ssim(o, img),
                               seconds=time.perf_counter() - t0, code=code_version(), **extra)
                    with rows_file.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{task} {name} {m}: {row['psnr']:.2f} dB", flush=True)
                    if i == 0:
                        Image.fromarray(o).save(out_dir / f"restore_{task}_{_slug(m)}.png")
            if i == 0:
                Image.fromarray(degraded).save(out_dir / f"restore_{task}_input.png")
                Image.fromarray(img).save(out_dir / f"restore_{task}_truth.png")
    summary = summarise(_rows(rows_file), images, tv)
    write_json(out_dir / "restore.json", summary)
    (out_dir / "restore_table.md").write_text(table(summary) + "\n")
    strips(out_dir, summary, a.tasks.split(","))
    print(table(summary))


def summarise(rows, images, tv) -> dict:
    """Mean PSNR/SSIM per task and method over the images every method of the task ran on (a
    method run on fewer images, e.g. the slow skip net, narrows the set for all: a mean over 1
    image beside means over 6 compares nothing); "images" counts them, "skipped" names the
    images left out of a task's means (under "skipped")."""
    out = {"tv_weights": tv, "tasks": {}}
    for task in TASKS:
        per = {}
        for r in rows:
            if r["task"] == task and r["image"] in images:
                per.setdefault(r["method"], {})[r["image"]] = r
        if not per:
            continue
        shared = sorted(set.intersection(*(set(v) for v in per.values())))
        if not shared:
            continue
        stats = {m: {"psnr": float(np.mean([v[i]["psnr"] for i in shared])),
                     "ssim": float(np.mean([v[i]["ssim"] for i in shared])), "images": len(shared)}
                 for m, v in per.items()}
        skipped = sorted(set.union(*(set(v) for v in per.values())) - set(shared))
        out["tasks"][task] = stats
        if skipped:
            out.setdefault("skipped", {})[task] = skipped
    return out


def table(summary) -> str:
    lines = ["| task | method | PSNR (dB) | SSIM | images |", "|---|---|---|---|---|"]
    for task, stats in summary["tasks"].items():
        for m, s in sorted(stats.items(), key=lambda kv: -kv[1]["psnr"]):
            lines.append(f"| {task} | {m} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['images']} |")
    return "\n".join(lines)


def strips(out_dir: Path, summary, tasks) -> None:
    """One strip per task: degraded input, our better network, best baseline, truth (first image)."""
    for task in tasks:
        stats = summary["tasks"].get(task)
        if not stats:
            continue
        best = max((m for m in BASELINES[task] if m in stats), key=lambda m: stats[m]["psnr"], default=None)
        ours = max((m for m in ("deep-decoder", MARGIN_METHOD, "skip") if m in stats), key=lambda m: stats[m]["psnr"], default=None)
        names = ["input", ours, best, "truth"]
        paths = [out_dir / f"restore_{task}_{_slug(n)}.png" for n in names if n]
        if not all(p.exists() for p in paths):
            continue
        ims = [Image.open(p).convert("RGB") for p in paths]
        h, w = ims[-1].height, ims[-1].width
        strip = Image.new("RGB", (w * len(ims) + 4 * (len(ims) - 1), h), "white")
        for j, im in enumerate(ims):
            strip.paste(im.resize((w, h), Image.NEAREST), (j * (w + 4), 0))
        strip.save(out_dir / f"strip_{task}.png")


if __name__ == "__main__":
    run_main(main)
