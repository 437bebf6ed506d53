"""Fused Adam against the plain form (on a CPU, torch's single-tensor loop, not its foreach
form) on this machine: ms per fit step, the two alternated in one process so that a shared
machine's drift falls on both alike (benchmarks/alternate.py).

    python -m benchmarks.adam --data ../shared/data/kodak

Rows: the CPU speed table's compiled configurations (192x128 k=16 alone, nine 256x170 tiles
at k=22) and its eager single image. Results go to benchmarks/results/adam_<device>.json.
"""
import functools
import json
from contextlib import contextmanager

import torch

import ddcodec
from ddcodec import fit

from .alternate import alternate, parser
from .rd import load_images
from .speed import _bank

CONFIGS = [("B=1 192x128 k=16, compiled", 1, 4, 16, True), ("B=1 192x128 k=16, eager", 1, 4, 16, False),
           ("B=9 256x170 k=22, compiled", 9, 3, 22, True)]


def plain_adam(params, lr, betas):
    return torch.optim.Adam(params, lr=lr, betas=betas)


@contextmanager
def adam_of(make):
    """fit.optimise's Adam is make for the duration (fit.adam is the one the fit calls)."""
    real, fit.adam = fit.adam, make
    try:
        yield
    finally:
        fit.adam = real


def compare(imgs, k, compile_, dev, rounds: int, steps: int) -> dict:
    """ms per step of each form, round by round (alternate.alternate): one fit per form."""
    forms = {name: (_bank(imgs, k, dev), {"compile": compile_}, functools.partial(adam_of, make))
             for name, make in (("fused", fit.adam), ("plain", plain_adam))}
    times = alternate(forms, dev, rounds, steps)
    fused_is = fit.adam([torch.zeros(1, device=dev, requires_grad=True)], 0.01, (0.9, 0.999)).defaults["fused"]
    return {"ms_per_step": times, "fused_available": bool(fused_is),
            "ratio_per_round": [f / p for f, p in zip(times["fused"], times["plain"])]}


def main(argv=None):
    a = parser("fused Adam against the plain form", 4, "100 alone, 30 a bank").parse_args(argv)
    dev = ddcodec.codec.resolve_device(a.device)
    result = {"device": dev.type, "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": []}
    for name, bank, down, k, compile_ in CONFIGS:
        imgs = [im for im in load_images(a.data, down).values() if im.shape[0] < im.shape[1]][:bank]
        row = dict(config=name, **compare(imgs, k, compile_, dev, a.rounds, a.steps or (100 if bank == 1 else 30)))
        result["rows"].append(row)
        print(name, " ".join(f"{r:.2f}" for r in row["ratio_per_round"]), "(fused / plain, per round)", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"adam_{dev.type}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
