"""Where a fit's error sits: the decoded squared error by distance to the nearest tile boundary
or image edge, for the files rd.py wrote, and how two folders of files differ band by band.

    python -m benchmarks.edges --profile kodak-half --point bpp0.5 --names kodim01,kodim02 \\
        --data ../shared/data/kodak --against ddc-nomargin

It is how the margin's gain was traced to the pixels next to a canvas's edge (NOTES.md): each
band's error is given as a multiple of the image's mean, and the gain of --folder over
--against in dB. Output: results/<profile>/edges_<point>.json.
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np

import ddcodec
from ddcodec import tiles

from .common import write_json
from .rd import PROFILES, load_images

BANDS = ((0, 1), (1, 4), (4, 8), (8, 16), (16, None))  # pixels from the nearest boundary: [a, b)


def distance(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """[H, W] distance of each pixel to the nearest boundary of its tile (an image edge included)."""
    def along(size, parts):
        d = np.empty(size, np.int64)
        cuts = tiles.edges(size, parts)
        for a, b in zip(cuts[:-1], cuts[1:]):
            x = np.arange(a, b)
            d[a:b] = np.minimum(x - a, b - 1 - x)
        return d
    return np.minimum(along(height, rows)[:, None], along(width, cols)[None, :])


def profile(data: bytes, truth: np.ndarray) -> dict:
    """Mean squared error per band, over the channels, and the image's mean."""
    err = ((ddcodec.decode(data).astype(np.float64) - truth) ** 2).reshape(truth.shape[0], truth.shape[1], -1).mean(-1)
    rows, cols = ddcodec.info(data).get("tiles", (1, 1))
    h, w = err.shape
    # the codec lays tiles out on the landscape orientation (a portrait image is transposed)
    d = distance(w, h, rows, cols).T if h > w else distance(h, w, rows, cols)
    bands = {}
    for a, b in BANDS:
        sel = (d >= a) if b is None else (d >= a) & (d < b)
        bands[f"{a}-{b if b is not None else 'inf'}"] = dict(share=float(sel.mean()), mse=float(err[sel].mean()))
    return dict(mse=float(err.mean()), bpp=len(data) * 8 / (h * w), bands=bands)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="kodak-half")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--point", default="bpp0.5", help="the rate point's folder, as rd.py names it")
    ap.add_argument("--names", required=True, help="comma-separated image names")
    ap.add_argument("--folder", default="ddc", help="the files measured")
    ap.add_argument("--against", default=None, help="a second folder of the same images, for the gain")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    names = a.names.split(",")
    truth = {n: im.astype(np.float64) for n, im in load_images(a.data, PROFILES[a.profile], names=names).items()}
    base = a.out / a.profile
    result = {}
    for n in names:
        res = {f: profile((base / f / a.point / f"{n}.ddc").read_bytes(), truth[n])
               for f in (a.folder, a.against) if f}
        result[n] = res
        cells = []
        for band in res[a.folder]["bands"]:
            cell = " ".join(f"{f} {r['bands'][band]['mse'] / r['mse']:.2f}x" for f, r in res.items())
            if a.against:
                gain = 10 * math.log10(res[a.against]["bands"][band]["mse"] / res[a.folder]["bands"][band]["mse"])
                cell += f" ({gain:+.2f} dB)"
            cells.append(f"[{band}) {res[a.folder]['bands'][band]['share']:.3f}: {cell}")
        print(n, " | ".join(cells), flush=True)
    write_json(base / f"edges_{a.point}.json", dict(folder=a.folder, against=a.against, images=result))
    print(json.dumps({"written": str(base / f"edges_{a.point}.json")}))


if __name__ == "__main__":
    main()
