"""Rate-distortion benchmark: ddcodec against JPEG, WebP, JPEG 2000 and AVIF (Pillow).

    python -m benchmarks.rd --profile kodak-mini --data ../shared/data/kodak [--images 6]  # default: kodim01-08
    ddc bench rd --profile kodak-mini --data ../shared/data/kodak [--ray [ADDRESS]]

Every point is a real file: bpp from its size, PSNR-RGB and MS-SSIM on the decoded 8-bit image.
Rows go to benchmarks/results/<profile>/rows.jsonl as they are made, so a re-run resumes.
Outputs: <codec>.json in CompressAI's format, bd_rate.json, rd.png and a markdown table.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

import ddcodec
import ddcodec.images
from ddcodec.errors import ConfigError
from ddcodec.metrics import ms_ssim, psnr

from . import baselines
from .common import code_version, run_main, write_json

PROFILES = {"kodak": 1, "kodak-half": 2, "kodak-mini": 4}  # profile -> downscale factor
# ddcodec rate points: target bpp, with k chosen from the target and the quantization budget
# searched to fill it (ddcodec.rate). On kodak-mini this beat fixed (k, budget) pairs
# (benchmarks/NOTES.md).
POINTS = {"kodak": [0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0],
          "kodak-mini": [0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0],
          # 384x256: a step between the CPU's profile and the GPU's, with fewer points (a
          # half-size fit at 1.0 bpp takes ~10 minutes on one core)
          "kodak-half": [0.1, 0.15, 0.25, 0.5, 1.0]}
TARGETS = (0.25, 0.5, 1.0)
# the images of each profile: the first N Kodak images (0: all 24). The CPU's profiles are
# subsets, so a 2-core machine finishes them; a run over fewer images is a part of the profile.
PROFILE_IMAGES = {"kodak": 0, "kodak-half": 4, "kodak-mini": 8}


def _stems(folder: Path, limit: int = 0) -> list:
    return [p.stem for p in sorted(folder.glob("*.png"))][: limit or None]


def load_images(folder: Path, downscale: int, limit: int = 0, names=None) -> dict:
    stems = _stems(folder)
    if not stems:
        raise SystemExit(f"no .png images in {folder}")
    if names:
        unknown = sorted(set(names) - set(stems))
        if unknown:  # a typo would otherwise run on fewer images than asked for, silently
            raise SystemExit(f"not in {folder}: {', '.join(unknown)}")
        stems = [s for s in stems if s in names]
    else:
        stems = stems[: limit or None]
    out = {}
    for stem in stems:
        img = ddcodec.images.read_image(folder / f"{stem}.png")
        if downscale > 1:
            h, w = img.shape[:2]
            img = np.asarray(Image.fromarray(img).resize((w // downscale, h // downscale), Image.LANCZOS))
        out[stem] = img
    return out


def _done(rows_file: Path) -> list:
    if not rows_file.exists():
        return []
    return [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]


def _append(rows_file: Path, row: dict) -> None:
    with rows_file.open("a") as f:
        f.write(json.dumps(row) + "\n")


def ours(iters: int, tile: str = "auto", optimizer: str = "auto", margin: str = "auto") -> str:
    """Our curve's name: "ddcodec" at the default recipe, "ddcodec-6000it" at 6,000 iterations,
    "ddcodec-whole" with one network per image (--tile none) instead of the default tiles,
    "ddcodec-adam" with Adam for every tensor instead of the recipe's Muon (the recipe until
    the thirtieth session: the rows of that time carry the name), "ddcodec-nomargin" with the
    image at the canvas's corner instead of its centre (the recipe until the forty-third). Adam
    with the margin is "ddcodec-adam-margin": the "-adam" rows on file predate the margin, and a
    run under their name would skip their points as done."""
    name = "ddcodec" if iters == ddcodec.FitConfig.iters else f"ddcodec-{iters}it"
    name = name if tile == "auto" else f"{name}-{'whole' if tile == 'none' else 'tile' + tile}"
    same = optimizer in ("auto", ddcodec.FitConfig().optimizer_for(True))  # the recipe's own: its curve
    name = name if same else f"{name}-{optimizer}"
    if margin != "auto":
        return f"{name}-nomargin"
    return name if same else f"{name}-margin"


def run_ddcodec(images: dict, points, args, out_dir: Path, rows_file: Path, have: set) -> None:
    """Encode every rate point through ddcodec.collection: banks of one size, fitted serially or
    on a Ray cluster (--ray), each .ddc written as its bank finishes and scored as it lands."""
    from ddcodec.collection import Settings, encode_many, serial_runner
    name_ = ours(args.iters, args.tile, args.optimizer, args.margin)
    files = out_dir / name_.replace("ddcodec", "ddc")  # ddc/, ddc-6000it/, ddc-whole/, ddc-adam/
    sources = _image_files(images, args, out_dir)
    tasks, labels = [], {}
    for bpp in points:
        label = f"bpp{bpp}"
        fit = ddcodec.FitConfig(iters=args.iters, optimizer=None if args.optimizer == "auto" else args.optimizer,
                                margin=None if args.margin == "auto" else False)
        settings = Settings(None, 6, fit=fit,
                            quant=ddcodec.QuantConfig(target_bpp=bpp), device=args.device,
                            tile=ddcodec.tiles.tile_for(args.tile, bpp))
        pairs = [(sources[n], files / label / f"{n}.ddc") for n in images
                 if (name_, n, label) not in have]
        tasks.append((pairs, settings))
        labels.update({str(o): (Path(o).stem, label) for _, o in pairs})

    def score(outcomes):
        for o in outcomes:
            name, label = labels[o.output]
            if o.status == "failed":
                print(f"{name_} {label} {name}: failed: {o.error}", flush=True)
                continue
            data = Path(o.output).read_bytes()
            t0 = time.perf_counter()
            out = ddcodec.decode(data)  # on the CPU, as a user's decode runs, whatever fitted it
            dt = time.perf_counter() - t0
            img = images[name]
            h, w = out.shape[:2]
            _append(rows_file, dict(codec=name_, image=name, quality=label, bytes=len(data),
                                    bpp=8 * len(data) / (h * w), psnr=psnr(out, img), ms_ssim=ms_ssim(out, img),
                                    encoding_time=o.summary.get("seconds"), decoding_time=dt,
                                    device=o.summary.get("device"), code=code_version()))
            print(f"{name_} {label} {name}: {o.status}", flush=True)

    runner = serial_runner
    if args.ray is not None:
        from ddcodec.cluster import ray_runner
        runner = ray_runner(None if args.ray == "local" else args.ray)
    # force: rows.jsonl is the record of what is done (`have`), so a file it lacks is a leftover
    # (of an older recipe, or of a run stopped between writing and scoring) and is fitted again,
    # not scored as this recipe's (encode_many would skip an output that exists and decodes)
    encode_many(tasks, args.bank, True, runner, score)


def _image_files(images: dict, args, out_dir: Path) -> dict:
    """Workers read files: the profile's images as lossless PNGs (the originals at full size)."""
    if PROFILES[args.profile] == 1:
        return {n: args.data / f"{n}.png" for n in images}
    folder = out_dir / "images"
    folder.mkdir(exist_ok=True)
    for n, img in images.items():
        if not (folder / f"{n}.png").exists():
            ddcodec.images.write_atomic(folder / f"{n}.png", ddcodec.images.png_bytes(img))
    return {n: folder / f"{n}.png" for n in images}


def run_baselines(images: dict, codecs, rows_file: Path, have: set) -> None:
    for codec in codecs:
        for name, img in images.items():
            if (codec, name, None) in have:
                continue
            for row in baselines.sweep(codec, img):
                _append(rows_file, dict(codec=codec, image=name, **row))
            _append(rows_file, dict(codec=codec, image=name, quality=None, done=True))
        print(f"{codec} done", flush=True)


def summarise(rows, out_dir: Path, images, write: bool = True) -> dict:
    """Curves, BD-rates and equal-rate rows over `images`; written to out_dir only when asked
    (a run over a part of a profile must not overwrite the whole profile's files)."""
    by_codec = {}
    for r in rows:
        if r.get("done") or r["image"] not in images:
            continue
        by_codec.setdefault(r["codec"], {}).setdefault(r["image"], []).append(r)
    complete = {c: v for c, v in by_codec.items() if set(v) == set(images)}
    curves = {}
    for codec, per_image in complete.items():
        # a curve averages a setting over every image: points that only some images have
        # so far (a profile part-way through a new point) wait for the rest
        shared = set.intersection(*({r["quality"] for r in rows_} for rows_ in per_image.values()))
        if not shared:  # e.g. JPEG 2000's ratios differ between grey and colour images
            print(f"({codec}: no setting common to all {len(per_image)} images, so no mean curve)", flush=True)
            continue
        per_image = {name: sorted((r for r in rows_ if r["quality"] in shared), key=lambda r: _quality_order(r["quality"]))
                     for name, rows_ in per_image.items()}
        d = baselines.compressai_json(codec, f"{codec} on {out_dir.name} ({len(images)} images)",
                                      per_image, TARGETS)
        if write:
            write_json(out_dir / f"{codec}.json", d)
        curves[codec] = (d["results"]["bpp"], d["results"]["psnr-rgb"], d["psnr_at_bpp"])
    anchors = [a for a in ("jpeg", "webp") if a in curves]
    bd = {a: {c: bd_rate_per_image(complete[a], complete[c]) for c in curves} for a in anchors}
    bd_mean_curve = {a: {c: baselines.bd_rate(curves[a][:2], curves[c][:2]) for c in curves} for a in anchors}
    matched = equal_rate(by_codec)
    if write:
        write_json(out_dir / "bd_rate.json", bd)
        write_json(out_dir / "bd_rate_mean_curve.json", bd_mean_curve)
        _plot(curves, out_dir / "rd.png", out_dir.name)
        write_json(out_dir / "equal_rate.json", matched)
    return {"curves": curves, "bd_rate": bd, "bd_rate_mean_curve": bd_mean_curve, "equal_rate": matched}


def bd_rate_per_image(anchor: dict, test: dict) -> float:
    """The mean over images of each image's own BD-rate (as video coding's common test
    conditions average per sequence). A BD-rate of mean curves (every setting's bpp and PSNR
    averaged over the images) compares unlike curves here: ddcodec is rate-controlled, so each
    of its points is one rate for every image, while JPEG, WebP and AVIF are run at a quality,
    whose images land at many rates, and the mean of such points lies below the mean curve at
    fixed rates (PSNR is concave in the rate) by 0.1-0.4 dB: kodak-mini's -22 % against JPEG was
    -7 % image by image. NaN if any image's two curves do not overlap (the hard images are the
    ones that would drop out)."""
    per = [baselines.bd_rate(_curve(anchor[n]), _curve(test[n])) for n in anchor]
    return float("nan") if not per or any(math.isnan(v) for v in per) else float(np.mean(per))


def _curve(rows) -> tuple:
    return [r["bpp"] for r in rows], [r["psnr"] for r in rows]


def equal_rate(by_codec: dict) -> list:
    """Each ddcodec point against the baselines at the same rate, image by image: a baseline's
    PSNR interpolated at the bpp of our file of that image, averaged over the images that have
    the point. Unlike the curves and BD-rates, this needs neither every image nor several
    points, so it compares a profile that is only partly done (the CPU's full-size runs)."""
    out = []
    for codec, per_image in sorted(by_codec.items()):
        if not codec.startswith("ddcodec"):
            continue
        points = {}
        for name, rows_ in per_image.items():
            for r in rows_:
                points.setdefault(r["quality"], {})[name] = r
        for quality, mine in sorted(points.items()):
            row = dict(codec=codec, quality=quality, images=sorted(mine),
                       bpp=float(np.mean([r["bpp"] for r in mine.values()])),
                       psnr=float(np.mean([r["psnr"] for r in mine.values()])), at_same_bpp={})
            for base in baselines.CODECS:
                have = by_codec.get(base, {})
                if not all(n in have for n in mine):
                    continue
                at = [baselines.interpolate_at(have[n], [mine[n]["bpp"]])[0] for n in mine]
                if not any(math.isnan(v) for v in at):
                    row["at_same_bpp"][base] = float(np.mean(at))
            out.append(row)
    return out


def _quality_order(q):
    """Points in the order of their setting: JPEG's quality 1, 3, 10 (not "1", "10", "3"),
    ddcodec's bpp0.1, bpp0.25, bpp1.0."""
    if isinstance(q, str) and q.startswith("bpp"):
        q = q[3:]
    try:
        return (0, float(q), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(q))


def _plot(curves, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for codec, (bpp, p, _) in sorted(curves.items()):
        order = np.argsort(bpp)
        ax.plot(np.array(bpp)[order], np.array(p)[order], "o-" if codec.startswith("ddcodec") else ".-",
                label=codec, lw=2 if codec.startswith("ddcodec") else 1)
    ax.set(xlabel="bpp", ylabel="PSNR-RGB (dB)", title=f"Rate-distortion, {title}", xlim=(0, 1.6))
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def table(summary) -> str:
    lines = ["| codec | " + " | ".join(f"PSNR @ {t} bpp" for t in TARGETS) + " | BD-rate vs JPEG | BD-rate vs WebP |",
             "|---|" + "---|" * (len(TARGETS) + 2)]
    for codec, (_, _, at) in sorted(summary["curves"].items()):
        cells = [("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}")
                 for v in at.values()]
        bd = [summary["bd_rate"].get(a, {}).get(codec, float("nan")) for a in ("jpeg", "webp")]
        bd = ["–" if math.isnan(b) else f"{b:+.1f} %" for b in bd]
        lines.append(f"| {codec} | " + " | ".join(cells + bd) + " |")
    curve_bd = summary.get("bd_rate_mean_curve", {})
    if curve_bd:
        lines += ["", "BD-rates are each image's own, averaged. On the mean curves instead (every setting averaged "
                  "over the images first; this favours a rate-controlled codec against quality-controlled ones): "
                  + "; ".join(f"{c} vs {a} {v:+.1f} %" for a in curve_bd for c, v in sorted(curve_bd[a].items())
                              if c.startswith("ddcodec") and not math.isnan(v))]
    if summary.get("equal_rate"):
        lines += ["", "Each point against the baselines at the bpp of each image's file (mean PSNR over the images that have it):", "",
                  "| codec | point | images | bpp | PSNR | " + " | ".join(f"{c} at the same bpp" for c in baselines.CODECS) + " |",
                  "|---|---|---|---|---|" + "---|" * len(baselines.CODECS)]
        for r in summary["equal_rate"]:
            cells = [f"{r['at_same_bpp'][c]:.2f}" if c in r["at_same_bpp"] else "–" for c in baselines.CODECS]
            lines.append(f"| {r['codec']} | {r['quality']} | {len(r['images'])} | {r['bpp']:.3f} | {r['psnr']:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Rate-distortion benchmark")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="kodak-mini")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--images", type=int, default=None, help="use the first N images (0: all in --data; "
                    "summary files are written only for the profile's own images; default: the profile's, " + ", ".join(f"{p} {n or 24}" for p, n in PROFILE_IMAGES.items()) + ")")
    ap.add_argument("--names", default="", help="comma-separated image names, e.g. kodim01,kodim05 "
                    "(instead of --images): split a profile between processes, one per core")
    ap.add_argument("--iters", type=int, default=ddcodec.FitConfig.iters)
    ap.add_argument("--points", default="", help="comma-separated target bpps for ddcodec instead of the "
                    "profile's, e.g. 0.25,0.5: a part of a profile that a slow machine can finish")
    ap.add_argument("--bank", type=int, default=8, help="images fitted at once")
    ap.add_argument("--tile", default="auto", help="ddcodec's tiles: auto (the codec's default for a "
                    "rate target, from the image and the rate), none (one network per image, curve ddcodec-whole) or WxH")
    ap.add_argument("--optimizer", choices=["auto", *ddcodec.fit.OPTIMIZERS], default="auto",
                    help="ddcodec's optimiser: auto (the recipe's, Muon; curve ddcodec) or adam (curve ddcodec-adam-margin; ddcodec-adam names the rows of the recipe before Muon and the margin)")
    ap.add_argument("--margin", choices=["auto", "off"], default="auto",
                    help="ddcodec's canvas: auto (the recipe's, the image at its centre; curve ddcodec) or off "
                    "(at its corner, the recipe before; curve ddcodec-nomargin)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="fit the banks on Ray: a local instance, or the cluster at ADDRESS")
    ap.add_argument("--codecs", default="ddcodec," + ",".join(baselines.CODECS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--summary-only", action="store_true", help="summarise the rows already made")
    a = ap.parse_args(argv)
    known = ["ddcodec", *baselines.CODECS]
    if unknown := [c for c in a.codecs.split(",") if c not in known]:
        raise ConfigError(f"--codecs: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    try:
        points = [float(p) for p in a.points.split(",")] if a.points else POINTS[a.profile]
    except ValueError:
        raise ConfigError(f"--points takes bpps separated by commas, not {a.points!r}") from None
    n = PROFILE_IMAGES[a.profile] if a.images is None else a.images
    images = load_images(a.data, PROFILES[a.profile], n, a.names.split(",") if a.names else None)
    out_dir = a.out / a.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_file = out_dir / "rows.jsonl"
    have = {(r["codec"], r["image"], r.get("quality") if r["codec"].startswith("ddcodec") else None)
            for r in _done(rows_file) if r["codec"].startswith("ddcodec") or r.get("done")}
    codecs = [] if a.summary_only else a.codecs.split(",")
    run_baselines(images, [c for c in codecs if c != "ddcodec"], rows_file, have)
    if "ddcodec" in codecs:
        run_ddcodec(images, points, a, out_dir, rows_file, have)
    whole = sorted(images) == _stems(a.data, PROFILE_IMAGES[a.profile])  # else a part: no files written
    summary = summarise(_done(rows_file), out_dir, images, write=whole)
    print(table(summary))
    if whole:
        (out_dir / "table.md").write_text(table(summary) + "\n")
    else:
        count = PROFILE_IMAGES[a.profile]
        print(f"(a part of {a.profile}, whose summary is of the folder's first {count or 'all'} images: its summary "
              f"files were left as they were; `--profile {a.profile} --summary-only` rewrites them from every row"
              + (", and `--profile kodak` summarises every image of a folder at full size)" if count else ")"))


if __name__ == "__main__":
    run_main(main)
