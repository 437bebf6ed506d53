"""Muon against Adam: ms per fit step, the two alternated in one process so that a shared
machine's drift falls on both alike (benchmarks/alternate.py). Their quality is the RD
profiles' (benchmarks/rd.py) and benchmarks/NOTES.md's.

    python -m benchmarks.optimizers --data ../shared/data/kodak

Rows: the CPU speed table's compiled configurations (192x128 k=16 alone, a full-size image's
nine 256x170 tiles at k=22) and half of a Kodak image at k=64, compiled. Results go to
benchmarks/results/optimizers_<device>.json.
"""
from contextlib import nullcontext

import torch

import ddcodec
from ddcodec.fit import BETA1_COMPRESSION, BETA2_COMPRESSION

from .alternate import alternate, parser, summary
from .common import code_version, run_main, write_json
from .rd import load_images
from .speed import _bank

CONFIGS = [("B=1 192x128 k=16", 1, 4, 16, 100), ("B=9 256x170 k=22", 9, 3, 22, 20), ("B=1 384x256 k=64", 1, 2, 64, 10)]


def main(argv=None):
    a = parser("Muon against Adam, alternated round by round", 6, "CONFIGS'").parse_args(argv)
    dev = ddcodec.codec.resolve_device(a.device)
    result = {"device": dev.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "code": code_version(), "rounds": a.rounds, "rows": []}
    for name, bank, down, k, steps in CONFIGS:
        imgs = [im for im in load_images(a.data, down).values() if im.shape[0] < im.shape[1]][:bank]
        steps = a.steps or steps
        kw = dict(compile=True, betas=(BETA1_COMPRESSION, BETA2_COMPRESSION))
        forms = {o: (_bank(imgs, k, dev), dict(kw, optimizer=o), nullcontext) for o in ("adam", "muon")}
        times = alternate(forms, dev, a.rounds, steps)
        row = dict(config=name, steps_per_round=steps, ms_per_step=times, **summary(times, "adam"))
        result["rows"].append(row)
        ratios = row["ratio_per_round"]["muon"]
        print(f"{name}: median ms a step adam {row['median_ms']['adam']:.2f}, muon {row['median_ms']['muon']:.2f}; "
              f"muon / adam per round {min(ratios):.2f}-{max(ratios):.2f}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / f"optimizers_{dev.type}.json", result)


if __name__ == "__main__":
    run_main(main)
