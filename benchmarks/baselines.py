"""Classical codecs (JPEG, WebP, JPEG 2000, AVIF via Pillow) for the rate-distortion benchmark.

Everything is measured on what a user gets: bpp from the real encoded bytes, PSNR / MS-SSIM on
the decoded 8-bit image. Settings are chosen to be fair to each codec (each one's good default
mode, nothing crippled), and results are written in CompressAI's JSON results format so curves
can be plotted next to published ones.
"""
import io
import time
import warnings

import numpy as np
from PIL import Image, features

from ddcodec.metrics import ms_ssim, psnr

CODECS = ("jpeg", "webp", "jpeg2000", "avif")
_FEATURE = {"jpeg": "jpg", "webp": "webp", "jpeg2000": "jpg_2000", "avif": "avif"}
# metric keys in CompressAI's format <- keys of our sweep rows
_KEYS = {"bpp": "bpp", "psnr-rgb": "psnr", "ms-ssim-rgb": "ms_ssim",
         "encoding_time": "encoding_time", "decoding_time": "decoding_time"}


def check_codec(codec: str) -> None:
    """Raise a clear error if codec is unknown or this Pillow build lacks it."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    if not features.check(_FEATURE[codec]):
        raise RuntimeError(f"this Pillow build has no {codec} support "
                           f"(PIL.features.check({_FEATURE[codec]!r}) is False)")


def _save_args(codec: str, quality) -> dict:
    if codec == "jpeg":  # Pillow's default 4:2:0 subsampling; optimize = optimal Huffman tables
        return dict(format="JPEG", quality=int(quality), optimize=True)
    if codec == "webp":  # method 6: slowest, best-compressing search
        return dict(format="WEBP", quality=int(quality), method=6)
    if codec == "jpeg2000":
        # irreversible 9/7 wavelet + colour transform (mct=1): without it ~3 dB weaker at 0.5 bpp (Kodak).
        # "rates" = compression ratio against the raw 8-bit image; raw codestream, no JP2 boxes.
        return dict(format="JPEG2000", irreversible=True, mct=1, quality_mode="rates",
                    quality_layers=[float(quality)], no_jp2=True)
    # one thread so encoding times are comparable on a shared machine (bits do not change)
    return dict(format="AVIF", quality=int(quality), speed=6, max_threads=1)


def pillow_encode(codec: str, img: np.ndarray, quality) -> bytes:
    """Encode a uint8 HxWx3 or HxW image; quality is the codec's own knob (ratio for JPEG 2000)."""
    check_codec(codec)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, **_save_args(codec, quality))
    return buf.getvalue()


def pillow_decode(data: bytes) -> np.ndarray:
    """Decode to uint8 HxWx3, or HxW for a grayscale file."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im if im.mode == "L" else im.convert("RGB"), dtype=np.uint8).copy()


def quality_grid(codec: str, channels: int = 3) -> list:
    """Settings spanning about 0.05-1.5 bpp on Kodak-like images (lower-quality end first).

    The grids reach past 1.5 bpp because smooth images need high settings to get to 1 bpp.
    """
    check_codec(codec)
    if codec == "jpeg":  # even quality 1 costs ~0.07-0.1 bpp on Kodak: JPEG cannot go lower
        return [1, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90]
    if codec == "webp":
        return [0, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95]
    if codec == "avif":
        return [0, 10, 20, 30, 40, 50, 60, 65, 70, 75, 80, 85, 90]
    # JPEG 2000 hits its target rate almost exactly: bpp = 8 * channels / ratio
    raw = 8.0 * channels
    return [float(r) for r in np.geomspace(raw / 0.05, raw / 1.5, 12)]


def _match(out: np.ndarray, img: np.ndarray) -> np.ndarray:
    # a codec without a grayscale mode (WebP) hands back RGB for an L input
    if img.ndim == 2 and out.ndim == 3:
        return np.asarray(Image.fromarray(out).convert("L"))
    return out


def _ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    # ddcodec.metrics.ms_ssim trips pytorch-msssim's size assert for a side <= 160 px (its
    # fewer-scales fallback still fails); NaN there rather than lose the whole sweep
    try:
        return ms_ssim(a, b)
    except AssertionError as e:
        warnings.warn(f"MS-SSIM skipped for a {a.shape[1]}x{a.shape[0]} image: {e}", stacklevel=3)
        return float("nan")


def sweep(codec: str, img: np.ndarray, qualities=None) -> list[dict]:
    """Encode/decode img at every setting of quality_grid(codec); one row per setting."""
    qualities = quality_grid(codec, 1 if img.ndim == 2 else 3) if qualities is None else qualities
    rows = []
    for q in qualities:
        t0 = time.perf_counter()
        data = pillow_encode(codec, img, q)
        t1 = time.perf_counter()
        out = _match(pillow_decode(data), img)
        t2 = time.perf_counter()
        rows.append(dict(quality=q, bytes=len(data), bpp=8.0 * len(data) / (img.shape[0] * img.shape[1]),
                         psnr=psnr(img, out), ms_ssim=_ms_ssim(img, out),
                         encoding_time=t1 - t0, decoding_time=t2 - t1))
    return rows


def interpolate_at(rows: list[dict], bpps) -> list[float]:
    """One image's PSNR at each target bpp, linear in (bpp, psnr); NaN outside its bpp range."""
    rows = sorted(rows, key=lambda r: r["bpp"])
    x = np.array([r["bpp"] for r in rows])
    y = np.array([r["psnr"] for r in rows])
    return [float(np.interp(b, x, y)) if x[0] <= b <= x[-1] else float("nan") for b in bpps]


def mean_psnr_at(rows_per_image: dict, bpps) -> list[float]:
    """Mean over images of each image's own interpolated PSNR at each target.

    NaN if any image's curve misses a target: averaging only the images that reach it would
    bias the mean (the ones that cannot reach a low rate are the hard ones).
    """
    per = np.array([interpolate_at(rows, bpps) for rows in rows_per_image.values()])
    return [float(v) for v in per.mean(axis=0)]


def _envelope(rate, dist):
    """Sort by rate and keep only points better than every cheaper one (monotone curve)."""
    order = np.argsort(rate, kind="stable")
    keep_r, keep_d = [], []
    for r, d in zip(np.asarray(rate, float)[order], np.asarray(dist, float)[order]):
        if not keep_d or d > keep_d[-1]:
            keep_r.append(r)
            keep_d.append(d)
    return np.array(keep_r), np.array(keep_d)


def bd_rate(curve_a, curve_b, method: str = "akima") -> float:
    """BD-rate of curve_b (test) against curve_a (anchor) in percent; negative = b saves bits.

    Curves are (bpp list, psnr list). The bjontegaard package integrates only over the PSNR
    interval both curves cover; NaN (with a warning) if they do not overlap at all.
    """
    import bjontegaard

    ra, da = _envelope(*curve_a)
    rb, db = _envelope(*curve_b)
    if len(ra) < 2 or len(rb) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Insufficient curve overlap")
        return float(bjontegaard.bd_rate(ra, da, rb, db, method=method,
                                         require_matching_points=False, min_overlap=0))


def _columns(rows: list[dict]) -> dict:
    return {k: [r[src] for r in rows] for k, src in _KEYS.items()} | {
        "quality": [r["quality"] for r in rows], "bytes": [r["bytes"] for r in rows]}


def _mean_known(columns: list) -> list:
    """Per setting, the mean over images of the values known: a time is None where a resumed
    run found a file on disk that the run it came from wrote but never scored. None where no
    image has one (strict JSON has no NaN)."""
    known = np.array([[v is not None for v in col] for col in columns])  # a NaN stays a NaN
    a = np.array([[0.0 if v is None else v for v in col] for col in columns], dtype=float)
    sums, counts = a.sum(axis=0), known.sum(axis=0)
    return [float(s / n) if n else None for s, n in zip(sums, counts)]


def compressai_json(name: str, description: str, rows_per_image: dict, bpp_grid=(0.25, 0.5, 1.0)) -> dict:
    """Results in CompressAI's format: per quality index, the mean over images of each metric.

    Also holds each image's own rows and PSNR at the bpp_grid targets two ways: "psnr_at_bpp"
    interpolates each image's curve and then averages (the comparison at a fixed rate), and
    "psnr_at_bpp_mean_curve" interpolates the averaged curve, as reading a CompressAI plot does.
    The two differ by up to ~0.5 dB, so say which one a quoted figure is.
    """
    per_image = {img: _columns(rows) for img, rows in rows_per_image.items()}
    first = next(iter(per_image.values()))
    if any(len(c["bpp"]) != len(first["bpp"]) for c in per_image.values()):
        raise ValueError("every image needs the same quality settings to average per setting")
    results = {k: _mean_known([c[k] for c in per_image.values()]) for k in _KEYS}
    mean_curve = [dict(bpp=b, psnr=p) for b, p in zip(results["bpp"], results["psnr-rgb"])]
    keys = [str(b) for b in bpp_grid]
    return {"name": name, "description": description, "results": results,
            "quality": first["quality"],
            "psnr_at_bpp": dict(zip(keys, mean_psnr_at(rows_per_image, bpp_grid))),
            "psnr_at_bpp_mean_curve": dict(zip(keys, interpolate_at(mean_curve, bpp_grid))),
            "per_image": per_image}
