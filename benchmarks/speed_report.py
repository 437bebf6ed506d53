"""The speed benchmark's results: the JSON on file and the markdown table (benchmarks/speed.py
measures; this module only formats and stores)."""
import json
import re
from pathlib import Path

import torch

from ddcodec.fit import FitConfig

from . import products


def _split(count) -> str:
    """The triton preset's count is the head's, by inductor, and the tail kernels' own."""
    if "tail_mb_per_image_iter" not in count:
        return ""
    return f": the head {count['head_mb_per_image_iter']:.0f} MB by inductor, the tail kernels {count['tail_mb_per_image_iter']:.0f} MB by their own count"


def _on_file(out: Path, tag: str, device: str, counts):
    """The result on file if it was measured on this device (and with the same timed and
    quality iterations and timing rounds, where counts gives them; a file without rounds timed one)."""
    f = out / f"speed_{tag}.json"
    if not f.exists():
        return None
    old = json.loads(f.read_text())
    same = old.get("device") == device and (counts is None or (old.get("timed_iters"), old.get("quality_iters"), old.get("timing_rounds", 1)) == counts)
    # a CPU's rows hold for its thread count only (every CPU is "cpu" where platform names none)
    same = same and (tag != "cpu" or old.get("threads") == torch.get_num_threads())
    return old if same else None


def save(result, out: Path, tag: str):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"speed_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"speed_{tag}.md").write_text(table(result) + "\n")


def _line(r) -> str:
    named = re.search(r"B=(\d+)", r["config"])  # a folder with fewer images made a smaller bank
    bank = f" (a bank of {r['bank']})" if named and int(named.group(1)) != r.get("bank", int(named.group(1))) else ""
    return (f"{r['config']}{bank}: {_ms(r)} ms/image-iter, {r['it_per_s']:.1f} it/s, "
            f"PSNR {r['psnr']:.2f} dB, floor {r['floor_ms']:.3f} ms ({r['x_floor']:.0f}x)")


def _ms(r) -> str:
    was = r.get("ms_before")
    return f"{r['ms_per_image_iter']:.2f}" + ("" if was is None else f" (before {r.get('before', 'the shared program')}: {was:.2f})")


def _iters_note(d) -> str:
    its = d.get("fit_iters", FitConfig.iters)
    return "" if its == FitConfig.iters else f", {its} iterations, not the default"


def _stages_note(d) -> str:
    """The stages' first and last progress reports, in seconds from the start."""
    st = d.get("stages")
    parts = [f"{k} {a:.1f}-{b:.1f} s" for k, (a, b) in (st or {}).items()]
    names = {"search_steps": "step search", "_write_member": "writing", "decode": "exact decode"}
    parts += [f"{names.get(n, n)} {t:.1f} s in {c} call{'s' if c > 1 else ''}" for n, (t, c) in d.get("calls", {}).items() if c]
    dynamo = d.get("compile_seconds", {}).get("_compile.compile_inner")
    if dynamo is not None:
        parts.append(f"torch.compile {dynamo:.1f} s")
    return "" if not parts else " (" + ", ".join(parts) + ")"


def table(result) -> str:
    mem = lambda v: "–" if v is None else f"{v:.1f} GiB"  # noqa: E731
    lines = [f"Device: {result['device']}; measured peaks: {result['peaks']['fp32_tflops']:.2f} fp32 TFLOP/s, "
             f"{result['peaks']['copy_gbs']:.0f} GB/s copy.", "",
             "| configuration | size | ms per image-iteration | iterations/s | images/s, estimated (fit + fine-tuning steps only) | PSNR of the float fit | peak GPU memory | GFLOP / MB per image-iter | floor | x floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | {r['size']} | {_ms(r)} | {r['it_per_s']:.1f} | "
                     f"{r['images_per_s']:.3f} | {r['psnr']:.2f} dB | {mem(r['peak_gib'])} | "
                     f"{r['gflop_per_iter']:.2f} / {r['mb_per_iter']:.0f} | {r['floor_ms']:.3f} ms | {r['x_floor']:.0f}x |")
    for name, why in result.get("failed", {}).items():
        lines.append(f"| {name} | failed: {(why.splitlines() or [''])[0][:120]} | | | | | | | | |")
    counts = result.get("compiled_bytes")
    if counts:
        lines += ["", f"One compiled fit step, bytes read and written as inductor counts them "
                  f"({counts[0]['size']}, k={counts[0]['k']}, {counts[0]['precision']}): " + "; ".join(
                      f"{c['preset'] if c['preset'] != 'True' else 'default'} {c['mb_per_image_iter']:.0f} MB "
                      f"({c['widest_activations']:.1f} widest activations{_split(c)})" for c in counts) + "."]
    if result.get("products"):
        lines += ["", "The 1x1 convolutions' products alone (k x k blocks and the 3 x k output conv; "
                  "bytes: the two operands read once), against the copy bandwidth:", "",
                  products.table(result["products"])]
    for key, when in (("dataset_cold", "with an empty compile cache"), ("dataset", "")):
        d = result.get(key)
        if d:
            lines += ["", f"All {d['images']} images encoded at the default rate point ({d['precision']}"
                      f"{' + compile' if d['compile'] else ''}{_iters_note(d)}), files written{', ' + when if when else ''}: "
                      f"{d['seconds']:.1f} s wall clock{_stages_note(d)}."]
    for key, when in (("dataset_tiled_cold", ", with an empty compile cache"), ("dataset_tiled", "")):
        d = result.get(key)
        if d:
            lines += [f"The same images at --bpp {d['target_bpp']} (k from the target, tiles{_iters_note(d)}){when}: "
                      f"{d['seconds']:.1f} s, mean PSNR {d['psnr']:.2f} dB, {8 * d['bytes'] / 1e3:.0f} kbit in all."]
    d = result.get("decode")
    if d:
        gpu = "" if "cuda_s" not in d else (
            f"; on the GPU {1000 * d['cuda_s']:.0f} ms ({1000 * d['cuda_s_passes_of_8']:.0f} ms in passes of "
            f"8 channels), {'the same pixels as' if d['same_pixels'] else 'NOT the same pixels as'} the CPU's")
        lines += ["", f"Exact decode of one {d['size']} k={d['k']} file: {d['cpu_s']:.2f} s on the CPU "
                  f"({d['threads']} threads){gpu}."]
    return "\n".join(lines)
