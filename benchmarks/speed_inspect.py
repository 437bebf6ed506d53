"""Where a fit step's time and bytes go, for benchmarks/speed.py's parts: the profiler's table
(profile), inductor's byte count of one compiled step (bytes) and the triton preset's kernels
alone (tail)."""
import contextlib
import os

import torch

from ddcodec.fit import FitConfig, optimise

from .products import _sync


def profile_steps(imgs, k, precision, compile_, dev, warmup: int, steps: int) -> str:
    """torch.profiler's table of one configuration's fit steps: where the time goes, kernel
    by kernel (the device's time on a GPU), the top 30 by their own time."""
    from .speed import _bank  # here: speed imports this module
    _, _, z, loss, model = _bank(imgs, k, dev)
    # the recipe's optimiser, as speed.measure's rows time it (Muon's step is part of a fit's)
    opts = dict(mode=precision, compile=compile_, optimizer=FitConfig().optimizer_for(True))
    optimise(model, z, loss, warmup, 0.01, **opts)
    _sync(dev)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        optimise(model, z, loss, steps, 0.01, **opts)
        _sync(dev)
    table = prof.key_averages()
    for key in (["self_device_time_total", "self_cuda_time_total"] if dev.type == "cuda" else []) + ["self_cpu_time_total"]:
        try:  # the device column's name changed between torch versions
            return table.table(sort_by=key, row_limit=30)
        except (AttributeError, KeyError, ValueError):
            continue
    return table.table(row_limit=30)


def compiled_bytes(imgs, k, precision, preset, dev) -> dict:
    """Bytes one compiled fit step reads and writes, as inductor counts them kernel by kernel
    (each buffer once per kernel: a kernel that passes over its input twice, as a normalisation
    does, is counted once). On the CPU inductor lowers as it does for a GPU here (concatenation
    fused into its consumers, the GPU's recompute limits), so the count stands in for the
    GPU's; the counter is inductor's own, a private API, and may move between torch versions."""
    import torch._inductor.config as ic
    import torch._inductor.graph as graph
    from torch._dynamo import reset

    counted = []
    real = graph.GraphLowering.count_bytes

    def counting(self):
        out = real(self)
        counted.append(out[:2])  # the graph's bytes, and each scheduler node's (in 4-byte units)
        return out
    gpu_like = {} if dev.type == "cuda" else {  # inductor's GPU limits (private names, so with their 2.13 values)
        "force_pointwise_cat": True,
        "realize_opcount_threshold": getattr(ic, "_realize_opcount_threshold_default", 30),
        "realize_acc_reads_threshold": getattr(ic, "_realize_acc_reads_threshold_default", 8)}
    if dev.type != "cuda" and preset in ("fused", "fused-graphs", "triton", "triton-graphs"):
        from ddcodec.fit import FUSED_OPTIONS
        gpu_like.update(FUSED_OPTIONS)  # the GPU's settings of the preset, which the CPU leaves out
    from .speed import _bank  # here: speed imports this module
    _, _, z, loss, model = _bank(imgs, k, dev)
    reset()  # a fresh compile, not one from a cache, so that the counter runs
    graph.GraphLowering.count_bytes = counting
    torch._logging.set_logs(inductor_metrics=True)  # inductor counts only while that log is on
    triton = preset in ("triton", "triton-graphs")
    try:
        with ic.patch(fx_graph_cache=False, **gpu_like), _idle_kernels() if triton else contextlib.nullcontext(), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            optimise(model, z, loss, 1, 0.01, mode=precision, compile=preset)
    finally:
        graph.GraphLowering.count_bytes = real
        torch._logging.set_logs()  # back to the defaults (a TORCH_LOGS setting is not restored)
    if not counted:
        raise RuntimeError("inductor counted no graph (its byte counter may have moved in this torch)")
    h, w = imgs[0].shape[:2]
    widest = 4 * k * h * w * len(imgs)  # bytes of the widest activations: the unit of NOTES.md
    # the tail's custom ops leave inductor's count for the kernels' own (tail_kernels.tail_bytes)
    counted = [(total - 4 * sum(n for node, n in nodes if _is_tail_kernel(node)),
                [(node, n) for node, n in nodes if not _is_tail_kernel(node)]) for total, nodes in counted]
    per_image = sum(total for total, _ in counted) / len(imgs)
    # where the bytes go: each graph's share (forward, then backward) and its largest kernels
    kernels = sorted(((g, node.get_name(), 4 * n / widest) for g, (_, nodes) in enumerate(counted)
                      for node, n in nodes), key=lambda t: -t[2])
    out = {}
    if triton:  # the head and the small ops between the kernels as inductor counts them, and the kernels
        from .tail_kernels import tail_bytes
        from ddcodec import tail
        tail_total = tail_bytes(len(imgs), k, h // 2, w // 2, 3, 4, tail.LAUNCH.chunk, read_partials=False)
        out = {"head_mb_per_image_iter": per_image / 1e6, "tail_mb_per_image_iter": tail_total / len(imgs) / 1e6}
        per_image += tail_total / len(imgs)
    return {"preset": str(preset), "size": f"{w}x{h}", "k": k, "precision": precision, "graphs": len(counted), **out,
            "mb_per_image_iter": per_image / 1e6, "widest_activations": per_image * len(imgs) / widest,
            "widest_per_graph": [round(total / widest, 2) for total, _ in counted],
            "largest_kernels": [[g, name, round(x, 2)] for g, name, x in kernels[:8]]}


def _is_tail_kernel(node) -> bool:
    """Whether a scheduler node is one of the tail's custom ops (ddcodec::tail_*), which
    inductor counts as its inputs and outputs once, not as what the kernels move."""
    return str(getattr(getattr(node, "node", None), "op_overload", "")).startswith("ddcodec.tail_")


@contextlib.contextmanager
def _idle_kernels():
    """The triton preset's step as it is traced and compiled, its kernels' launches skipped,
    on any device (their device check passes as under the interpreter): the graph inductor
    counts is the real one, and nothing of the kernels runs (their outputs are left unwritten)."""
    from ddcodec import tail

    class Idle:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None
    real = tail.INTERPRETED, tail._tail_pass, tail._stats, tail._adjoint
    tail.INTERPRETED, tail._tail_pass, tail._stats, tail._adjoint = True, Idle(), Idle(), Idle()
    try:
        yield
    finally:
        tail.INTERPRETED, tail._tail_pass, tail._stats, tail._adjoint = real


def tail_part(dev, pk, save_part) -> dict:
    """The tail kernels (benchmarks/tail_kernels.py): whether they compute the tail at full
    size, their times, then their registers and spills as compiled for sm_90. On the CPU
    Triton's interpreter runs them (GPU_DRY), so the sizes shrink to a test's."""
    gpu = dev.type == "cuda"
    if not gpu:  # read when the kernels are defined, at the import
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        from ddcodec import tail

        from . import tail_kernels
    except ImportError as e:  # no Triton here: the preset falls back to eager kernels
        return {"unavailable": str(e)}
    part = {}
    sizes = {} if gpu else dict(k=16, h=8, w=12)
    try:
        part["check"] = tail_kernels.check(dev, **sizes)
    except Exception as e:  # noqa: BLE001 - a kernel that fails to build or run: say so, and stop the part
        part["failed"] = f"{type(e).__name__}: {str(e)[:500]}"
        print(f"tail kernels: check failed ({part['failed'][:200]})", flush=True)
        return part
    save_part(part)
    kwargs = {} if gpu else dict(configs=((2, "fp32"),), launches=[tail.Launch(16, 64, 4)], reps=1)

    def on_row(rows):  # saved row by row, with the fastest launch so far
        part["times"] = rows
        best = tail_kernels.best_launch(rows, 24 if gpu else 2)
        if best is not None:
            part["best_launch"] = [best.tile, best.chunk, best.warps]
        save_part(part)
    on_row(tail_kernels.times(dev, pk["copy_gbs"], **sizes, **kwargs, on_row=on_row))
    if not gpu:  # registers and spills as compiled for sm_90: a GPU's compiles just ran, and its
        # session's seconds are scarce (~1 s a kernel, 14 of them); the CPU's tests check them too
        part["sm90"] = tail.sm90_report()
    return part


def _tail_table(part) -> str:
    if "unavailable" in part:
        return f"tail kernels: unavailable ({part['unavailable']})"
    if "failed" in part:
        return f"tail kernels: failed ({part['failed']})"
    from . import tail_kernels
    return tail_kernels.table(part)


def _use_tail_launch(result):
    """Fit with the tile shape the tail part found fastest for the bank, if it ran."""
    launch = result.get("tail", {}).get("best_launch")
    if launch:
        from ddcodec import tail
        tail.LAUNCH = tail.Launch(*launch)
