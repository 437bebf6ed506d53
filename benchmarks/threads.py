"""How well a CPU fit uses the cores: ms per step at 1 thread and at all of them, eager and
compiled, alternated in one process (benchmarks/alternate.py) so that a shared machine's drift
falls on every form alike.

    python -m benchmarks.threads --data ../shared/data/kodak

Separate runs with OMP_NUM_THREADS=1 and without could not tell the two apart: the
twenty-first session's one-thread run had a single 192x128 image faster on one thread than
the twentieth's runs on two. Here each round times every form in turn, and the medians and the
per-round ratios say which is faster and by how much. Rows: the CPU speed table's single
192x128 image at k=16, a bank of 4 of them, and half of a Kodak image at k=64 (a compression
fit's default width). Results go to benchmarks/results/threads_<device>.json.
"""
import json
from contextlib import contextmanager

import torch

import ddcodec

from .alternate import alternate, parser, summary
from .rd import load_images
from .speed import _bank

# name, bank, downscale, k, steps a round
CONFIGS = [("B=1 192x128 k=16", 1, 4, 16, 100), ("B=4 192x128 k=16", 4, 4, 16, 30), ("B=1 384x256 k=64", 1, 2, 64, 10)]
KINDS = {"eager": False, "compiled": True}  # form name -> fit.optimise's compile


@contextmanager
def threads(n: int):
    """torch's intra-op threads set to n for the duration (the fit's kernels, eager or compiled,
    read it at each call)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def forms_of(imgs, k, dev, counts) -> dict:
    """A fit per (eager or compiled, thread count), named "eager 1t", "compiled 2t" and so on."""
    return {f"{c} {n}t": (_bank(imgs, k, dev), {"compile": how}, lambda n=n: threads(n))
            for c, how in KINDS.items() for n in counts}


def main(argv=None):
    a = parser("1 thread against all of them, alternated round by round", 8, "CONFIGS'").parse_args(argv)
    dev = ddcodec.codec.resolve_device(a.device)
    most = torch.get_num_threads()
    counts = sorted({1, most})
    result = {"device": dev.type, "threads": counts, "torch": torch.__version__, "rounds": a.rounds, "rows": []}
    for name, bank, down, k, steps in CONFIGS:
        imgs = [im for im in load_images(a.data, down).values() if im.shape[0] < im.shape[1]][:bank]
        steps = a.steps or steps
        times = alternate(forms_of(imgs, k, dev, counts), dev, a.rounds, steps)
        # the speed-up of all threads over one, per round and per form: > 1 where more cores pay
        gain = {c: [one / many for one, many in zip(times[f"{c} 1t"], times[f"{c} {most}t"])]
                for c in KINDS}
        row = dict(config=name, steps_per_round=steps, ms_per_step=times,
                   median_ms=summary(times, f"eager {most}t")["median_ms"], speedup_per_round=gain)
        result["rows"].append(row)
        print(name, ", ".join(f"{n} {m:.2f} ms" for n, m in row["median_ms"].items()), "(medians);",
              "; ".join(f"{c} 1t / {most}t " + " ".join(f"{r:.2f}" for r in g) for c, g in gain.items()), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"threads_{dev.type}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
