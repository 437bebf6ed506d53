"""Ways of running the same fit, timed in alternation: one fit per form, all in one process,
each round timing every form in turn, so that a shared machine's drift falls on all alike.
On this 2-core CPU two runs of speed.py minutes apart differed by up to 40 % in one row, and
by more than the gap between the compile presets it was meant to compare; alternated rounds
are what can tell such forms apart.

    python -m benchmarks.alternate --data ../shared/data/kodak   # the compile presets

Compares torch.compile's default against the "fused" preset (compiling.COMPILE_PRESETS), with the
eager fit for reference, on the CPU speed table's shapes: 192x128 at k=16 alone, and a
full-size image's nine 256x170 tiles at k=22; and on half of a Kodak image at k=64. Results go to
benchmarks/results/presets_<device>.json. benchmarks/adam.py uses the same alternation.
"""
import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import ddcodec
from ddcodec import fit

from .rd import load_images
from .speed import _bank, _sync

# name, bank, downscale, k, steps a round: the CPU speed table's two shapes, and half of Kodak
# at the default k=64 (a compression fit's default width)
CONFIGS = [("B=1 192x128 k=16", 1, 4, 16, 100), ("B=9 256x170 k=22", 9, 3, 22, 20), ("B=1 384x256 k=64", 1, 2, 64, 10)]
PRESETS = {"default": True, "fused": "fused", "eager": False}
WARM_STEPS = 3  # round 0: untimed, compiles each form


def alternate(forms: dict, dev, rounds: int, steps: int) -> dict:
    """forms: name -> (a bank from speed._bank, fit.optimise's keyword arguments, a context
    manager factory put around each of the form's rounds). name -> ms per step, a round each."""
    times = {name: [] for name in forms}
    for r in range(rounds + 1):
        for name, ((_, _, z, loss, model), kw, around) in forms.items():
            with around():
                _sync(dev)
                t0 = time.perf_counter()
                fit.optimise(model, z, loss, steps if r else WARM_STEPS, 0.01, **kw)
                _sync(dev)
            if r:
                times[name].append((time.perf_counter() - t0) / steps * 1000)
    return times


def summary(times: dict, base: str) -> dict:
    """Per form its median ms, and each form's per-round ratio to base (the same round)."""
    return {"median_ms": {n: statistics.median(t) for n, t in times.items()},
            "ratio_per_round": {n: [a / b for a, b in zip(t, times[base])] for n, t in times.items() if n != base}}


def parser(description: str, rounds: int, steps_help: str) -> argparse.ArgumentParser:
    """The options every alternated comparison takes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--steps", type=int, default=0, help=f"steps a round (default: {steps_help})")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return ap


def main(argv=None):
    a = parser("compile presets, alternated round by round", 8, "CONFIGS'").parse_args(argv)
    dev = ddcodec.codec.resolve_device(a.device)
    result = {"device": dev.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "rounds": a.rounds, "rows": []}
    for name, bank, down, k, steps in CONFIGS:
        imgs = [im for im in load_images(a.data, down).values() if im.shape[0] < im.shape[1]][:bank]
        steps = a.steps or steps
        forms = {p: (_bank(imgs, k, dev), {"compile": c}, nullcontext) for p, c in PRESETS.items()}
        times = alternate(forms, dev, a.rounds, steps)
        row = dict(config=name, steps_per_round=steps, ms_per_step=times, **summary(times, "default"))
        result["rows"].append(row)
        print(name, ", ".join(f"{n} {m:.2f} ms" for n, m in row["median_ms"].items()), "(medians);",
              "; ".join(f"{n} / default " + " ".join(f"{r:.2f}" for r in rs) for n, rs in row["ratio_per_round"].items()),
              flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"presets_{dev.type}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
