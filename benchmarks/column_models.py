"""Would an entropy model per input column of each 1x1 conv code the weights in fewer bits?

Folding a normalisation's scale into the next conv multiplies its columns, so a tensor's
columns differ in scale (benchmarks/NOTES.md: block1 at k=21, column stds 1 to 108 steps),
while the format codes each tensor with one discrete Laplace. This measures, in ideal code
lengths on real files, what two column models would save against that one:

- column oracle: each column's own Laplace, its scale known for free (a bound: side
  information to send the scales is not counted);
- column adaptive: each column's scale estimated from the values of that column already
  decoded (rows in file order), starting from the tensor's own scale with a weight of
  PRIOR values, so the decoder could follow it with no side information.

    python -m benchmarks.column_models --names kodim01,kodim02 --bpp 1.0 --downscale 4
    python -m benchmarks.column_models --files enc/*.ddc       # files already written

Rows go to benchmarks/results/column_models.jsonl.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ddcodec
from ddcodec import bitstream, entropy
from ddcodec.nets import tensor_shapes
from ddcodec.quant import QuantConfig

from .common import code_version
from .rd import load_images

PRIOR = 4  # values' weight of the tensor's scale in the adaptive estimate (1, 2, 4, 8 tried: 4-8 best)


def laplace_bits(q: np.ndarray, m: entropy.TensorModel, r) -> float:
    """Ideal bits of q under p(n) ~ r^|n - mu| on the model's [lo, hi] (r a scalar or one per value)."""
    r = np.clip(np.asarray(r, dtype=float), 1e-6, 1 - 1e-9)
    norm = (1 - r ** (m.mu - m.lo + 1) + r - r ** (m.hi - m.mu + 1)) / (1 - r)
    return float(np.sum(-np.abs(q - m.mu) * np.log2(r) + np.log2(norm)))


def ratio(mean_abs):
    """The r whose two-sided geometric has this mean |n - mu|: 2r / (1 - r^2) = b."""
    b = np.maximum(mean_abs, 1e-3)
    return (np.sqrt(1 + b * b) - 1) / b


def tensor_bits(q: np.ndarray, m: entropy.TensorModel) -> tuple:
    """Ideal bits of one tensor's integers under (its own model, the column oracle, the
    adaptive column model); anything but a 2-D conv is priced by its own model in all three."""
    r = m.decay / entropy.DECAY_ONE
    own = laplace_bits(q, m, r)
    if q.ndim != 2 or min(q.shape) < 2:
        return own, own, own
    a = np.abs(q - m.mu).astype(float)
    oracle = laplace_bits(q, m, ratio(np.broadcast_to(a.mean(0), q.shape)))
    prior = 2 * r / (1 - r * r)  # the tensor's model's own mean |n - mu|
    seen = np.cumsum(np.vstack([np.zeros(q.shape[1]), a[:-1]]), 0)  # each column's sum before row i
    rows = np.arange(q.shape[0])[:, None]
    return own, oracle, laplace_bits(q, m, ratio((seen + PRIOR * prior) / (rows + PRIOR)))


def file_bits(data: bytes) -> dict:
    """Ideal bits of a file's integers under the three models."""
    header, payload = bitstream.unpack(data)
    shapes = [s for _, s in tensor_shapes(header.arch)]
    ints = entropy.decode(payload, header.models, [int(np.prod(s)) for s in shapes])
    out = {"file_bits": 8 * len(data), "payload_bits": 8 * len(payload)}
    models = [tensor_bits(q.reshape(s), m) for q, s, m in zip(ints, shapes, header.models) if m.lo != m.hi]
    for name, bits in zip(("tensor", "column_oracle", "column_adaptive"), zip(*models)):
        out[name] = float(sum(bits))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="per-column entropy models, in ideal code lengths")
    ap.add_argument("--files", nargs="*", type=Path, help=".ddc files to measure (no encoding)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--names", help="comma-separated image names: one bank")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--bpp", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    if a.files:
        named = {f.name: f.read_bytes() for f in a.files}
        setting = {"files": True}
    else:
        if not a.names:
            raise SystemExit("give --files or --names")
        imgs = load_images(a.data, a.downscale, names=a.names.split(","))
        res = ddcodec.encode_bank(list(imgs.values()), channels=None, quant=QuantConfig(target_bpp=a.bpp),
                                  device="cpu", tile=None)  # one network per image: the tensors at their k
        named = {n: r.data for n, r in zip(imgs, res)}
        setting = {"downscale": a.downscale, "bpp": a.bpp}
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "column_models.jsonl", "a") as f:
        for name, data in named.items():
            bits = file_bits(data)
            row = {"image": name, **setting, "k": ddcodec.info(data)["arch"]["channels"], **bits,
                   "saving_oracle": 1 - bits["column_oracle"] / bits["tensor"],
                   "saving_adaptive": 1 - bits["column_adaptive"] / bits["tensor"], "code": code_version(), "torch": torch.__version__}
            f.write(json.dumps(row) + "\n")
            print(f"{name} k={row['k']}: {bits['file_bits'] / 8:.0f} bytes; column oracle "
                  f"{100 * row['saving_oracle']:+.2f} %, adaptive {100 * row['saving_adaptive']:+.2f} % of the weights' bits",
                  flush=True)


if __name__ == "__main__":
    main()
