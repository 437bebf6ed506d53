"""Fused Adam against the plain (foreach) form on this machine: ms per fit step, the two
alternated in one process so that a shared machine's drift falls on both alike.

    python -m benchmarks.adam --data ../shared/data/kodak

Rows: the CPU speed table's compiled configurations (192x128 k=16 alone, nine 256x170 tiles
at k=22) and its eager single image. Results go to benchmarks/results/adam_<device>.json.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import ddcodec
from ddcodec import fit

from .rd import load_images
from .speed import _bank

CONFIGS = [("B=1 192x128 k=16, compiled", 1, 4, 16, True), ("B=1 192x128 k=16, eager", 1, 4, 16, False),
           ("B=9 256x170 k=22, compiled", 9, 3, 22, True)]


def plain_adam(params, lr, betas):
    return torch.optim.Adam(params, lr=lr, betas=betas)


def alternate(imgs, k, compile_, dev, rounds: int, steps: int) -> dict:
    """ms per step of each form, round by round: one fit per form, timed in turn."""
    forms = {"fused": fit.adam, "plain": plain_adam}
    models = {name: _bank(imgs, k, dev) for name in forms}
    times = {name: [] for name in forms}
    real = fit.adam
    try:
        for r in range(rounds + 1):  # round 0 warms up (and compiles)
            for name, make in forms.items():
                _, _, z, loss, model = models[name]
                fit.adam = make
                t0 = time.perf_counter()
                fit.optimise(model, z, loss, 3 if r == 0 else steps, 0.01, compile=compile_)
                if r:
                    times[name].append((time.perf_counter() - t0) / steps * 1000)
    finally:
        fit.adam = real
    fused_is = fit.adam([torch.zeros(1, device=dev, requires_grad=True)], 0.01, (0.9, 0.999)).defaults["fused"]
    return {"ms_per_step": times, "fused_available": bool(fused_is),
            "ratio_per_round": [f / p for f, p in zip(times["fused"], times["plain"])]}


def main(argv=None):
    ap = argparse.ArgumentParser(description="fused Adam against the plain form")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="steps a round (default: 100 alone, 30 a bank)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    dev = ddcodec.codec.resolve_device(a.device)
    result = {"device": dev.type, "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": []}
    for name, bank, down, k, compile_ in CONFIGS:
        imgs = [im for im in load_images(a.data, down).values() if im.shape[0] < im.shape[1]][:bank]
        row = dict(config=name, **alternate(imgs, k, compile_, dev, a.rounds, a.steps or (100 if bank == 1 else 30)))
        result["rows"].append(row)
        print(name, " ".join(f"{r:.2f}" for r in row["ratio_per_round"]), "(fused / plain, per round)", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"adam_{dev.type}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
