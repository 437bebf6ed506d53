"""Quantization-aware fine-tuning and learned-rounding settings compared on the same fits: each
bank of images is fitted once with the default recipe, then quantized from copies of that fit
with each (steps, learning rate, rounding steps) setting, so only what follows the fit
differs. PSNR is the decoded file's.

    python -m benchmarks.qat --data ../shared/data/kodak --names kodim01,kodim02,kodim03,kodim04 --bpp 0.5

--bpp picks k as the RD profiles do (about 7 bits per weight) and controls the rate; without
it k is --channels and the default --max-loss budget holds. One line per run is appended to
benchmarks/results/qat.jsonl.
"""
import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from ddcodec import FitConfig, QuantConfig
from ddcodec.codec import fit_bank, quantize_bank
from ddcodec.quant import rounding_steps
from ddcodec.rate import channels_for_image

from .common import code_version
from .rd import load_images

# (steps, learning rate, learned-rounding steps): no fine-tuning, the setting before the
# sixteenth session, the fine-tuning since, and that with the default learned rounding (None:
# a third of the fit's iterations) since the forty-eighth stop
SETTINGS = [(0, 1e-4, 0), (300, 0.002, 0), (QuantConfig.qat_iters, QuantConfig.qat_lr, 0),
            (QuantConfig.qat_iters, QuantConfig.qat_lr, None)]


def compare(images, channels, bpp, settings=SETTINGS, fit=FitConfig(), layers=6, device="cpu") -> dict:
    """Mean decoded PSNR and bpp of each fine-tuning setting, from one fit of the bank."""
    bank = fit_bank(images, channels, layers, fit, device)
    out = []
    for steps, lr, rounds in settings:
        results = quantize_bank(copy.deepcopy(bank), QuantConfig(qat_iters=steps, qat_lr=lr, round_iters=rounds,
                                                                 target_bpp=bpp))
        out.append({"qat_iters": steps, "qat_lr": lr, "round_iters": rounding_steps(QuantConfig(round_iters=rounds), fit.iters),
                    "psnr": [r.psnr for r in results], "bytes": [r.bytes for r in results],
                    "mean_psnr": float(np.mean([r.psnr for r in results])),
                    "mean_bpp": float(np.mean([r.bpp for r in results]))})
    return {"channels": channels, "target_bpp": bpp, "settings": out}


def main(argv=None):
    ap = argparse.ArgumentParser(description="fine-tuning settings on the same fits")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--names", required=True, help="comma-separated image names: one bank")
    ap.add_argument("--bpp", type=float, help="rate control (k from the target); else --channels at --max-loss")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--downscale", type=int, default=4, help="4: kodak-mini's 192x128")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="the fit's torch.compile (auto: the codec's rule): compiled and eager kernels round differently")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    fit = FitConfig(compile={"auto": "auto", "on": True, "off": False}[a.compile])
    names = a.names.split(",")
    images = load_images(a.data, a.downscale, names=names)
    ims = [images[n] for n in names]
    k = channels_for_image(a.bpp, ims[0].shape) if a.bpp else a.channels
    h, w = ims[0].shape[:2]
    row = {"names": names, "size": f"{max(h, w)}x{min(h, w)}", "threads": torch.get_num_threads(),
           "compile": a.compile, "code": code_version(), "torch": torch.__version__, **compare(ims, k, a.bpp, fit=fit)}
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "qat.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    for s in row["settings"]:
        print(f"{s['qat_iters']} steps at {s['qat_lr']:g}, {s['round_iters']} rounding steps: "
              f"{s['mean_psnr']:.4f} dB at {s['mean_bpp']:.4f} bpp", flush=True)


if __name__ == "__main__":
    main()
