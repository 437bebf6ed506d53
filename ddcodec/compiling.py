"""torch.compile for the fits: presets, the program the Deep Decoder's fits share, the Triton
tail's custom ops, and the eager fallback when compiling fails.

A step of the Deep Decoder is memory-bound: its time goes to the upsampling, ReLU and
normalisation at full resolution and their backward passes (the team's design notes), which eager PyTorch
runs as separate kernels that each read and write the whole activation. Compiling fuses them;
the presets trade more (recompute instead of store, CUDA graphs against launch overhead, the
hand-written tail kernels of tail.py) for the cases where that pays. fit.optimise calls
compiled(); nothing here knows about the loss or the optimiser.
"""
import functools
import warnings

import torch

from .errors import ConfigError

def compiled(model, preset=True, device=torch.device("cpu")):
    """The model's forward through torch.compile with a preset's settings (COMPILE_PRESETS;
    True: inductor's defaults), made once per model, preset and device type, and kept on it.
    The Deep Decoder, trained or folded, runs one shared program (nets.decoder_program): the
    fit and the fine-tuning after it then compile once between them. Not under CUDA graphs:
    there a Parameter is a static input and a plain tensor is copied in before each replay,
    so those presets keep each net's own forward, on its own weights.
    If compiling fails (no C++ compiler on the machine, say), the fit warns once and goes on
    with the eager forward: the same function, only slower. That is decided per model, so one
    model's failure leaves the next to compile."""
    key = (preset, torch.device(device).type)
    fn = getattr(model, "_ddc_compiled", None)
    if fn is None or getattr(fn, "key", None) != key:
        import torch._dynamo.config as dynamo_config
        # Every bank shape (k, bank size, image size) is one compilation of the same forward;
        # torch's default limit of 8 sends a benchmark sweeping k back to eager half-way.
        # (cache_size_limit was its name before torch 2.7; pyproject allows older torch)
        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
        deep_decoder = model.arch.kind == "deep-decoder"
        if preset in TRITON_PRESETS and not tail_supported(model.arch):
            # nothing for the tail kernels to do: the default compile, or its CUDA-graph form
            preset = True if preset == "triton" else "reduce-overhead"
        if preset == "triton":
            forward = _needs_kernels(lambda z, params, program=_shared_program((preset, key[1])): program(
                z, *model.program_args(params)))
        elif preset == "triton-graphs":
            # each net's own terms, the absent ones made inside the graph: under CUDA graphs a
            # Parameter is a static input, and program_args' constants would be copied in
            options = dict(FUSED_OPTIONS, **{"triton.cudagraphs": True}) if key[1] == "cuda" else {}
            forward = _needs_kernels(torch.compile(lambda z, params: _triton_program(z, *model.terms(params)),
                                                   dynamic=False, options=options))
        elif deep_decoder and not (preset in GRAPH_MODES and key[1] == "cuda"):
            program = _shared_program((preset, key[1]))  # the preset as changed above
            forward = lambda z, params: program(z, *model.program_args(params))  # noqa: E731
        else:
            forward, kwargs = _compile_settings(model.forward, deep_decoder, preset, key[1])
            forward = torch.compile(forward, dynamic=False, **kwargs)
        # the fallback is the plain forward: the fused output conv is only for inductor
        fn = _EagerOnFailure(forward, model.forward)
        fn.key = key
        model._ddc_compiled = fn
    return fn


def fell_back(model) -> bool:
    """Whether the model's compiled forward failed to compile and runs eager kernels."""
    fn = getattr(model, "_ddc_compiled", None)
    return fn is not None and fn.tried and fn.fn is fn.eager


_PROGRAMS = {}  # (preset, device type) -> decoder_program (_triton_program) through torch.compile


def _shared_program(key):
    if key not in _PROGRAMS:
        from .nets import decoder_program
        forward = _triton_program if key[0] == "triton" else decoder_program
        forward, kwargs = _compile_settings(forward, True, *key)
        _PROGRAMS[key] = torch.compile(forward, dynamic=False, **kwargs)
    return _PROGRAMS[key]


def tail_supported(arch) -> bool:
    """Whether the "triton" preset's tail kernels (tail.py) cover an architecture: the Deep
    Decoder with at least one upsampling, and k small enough for a tile's tensors to stay in
    registers. Any other falls back to the default compile."""
    return arch.kind == "deep-decoder" and arch.layers >= 2 and arch.channels <= TAIL_MAX_CHANNELS


def _triton_program(z, weights, biases, scales, shifts, out_w, out_b, fused: bool = True) -> torch.Tensor:
    """decoder_program with the full-size tail as the hand-written kernels (tail.tail; imported
    here, so that torch alone serves every other preset): the head (nets.decoder_head) and the
    tail trace into one graph, so inductor fuses the small ops around the kernels. A term given
    as None (the parametrisation lacks it: nets' terms) is made here, inside the graph. fused is
    _compile_settings' flag for decoder_program; the kernels are always fused."""
    from . import tail as kernels
    from .nets import decoder_head
    y = decoder_head(z, weights, biases, scales, shifts)
    bank, k = y.shape[:2]
    const = lambda v, *shape: torch.full((bank, *shape), v, device=y.device)  # noqa: E731
    g_a, b_a, g_b, b_b = ((const(1.0, k), const(0.0, k), const(1.0, k), const(0.0, k)) if scales is None
                          else (scales[-2], shifts[-2], scales[-1], shifts[-1]))
    c_b = const(0.0, k) if biases is None else biases[:, -1]
    c_o = const(0.0, out_w.shape[1]) if out_b is None else out_b
    return kernels.tail(y, g_a, b_a, weights[-1], c_b, g_b, b_b, out_w, c_o)


def _needs_kernels(forward):
    """forward, first refusing a device the tail kernels cannot run on, with a clear reason for
    the fallback's warning (outside the compiled graph, which would only break on it)."""
    def checked(z, params):
        from . import tail as kernels
        if z.device.type != "cuda" and not kernels.INTERPRETED:
            raise RuntimeError("the triton preset's kernels need a CUDA GPU (or TRITON_INTERPRET=1 on a CPU, slowly)")
        return forward(z, params)
    return checked


def _compile_settings(forward, deep_decoder: bool, preset, device_type: str) -> tuple:
    """(the function to compile, torch.compile's keyword arguments) of a preset; forward takes
    fused= when deep_decoder."""
    if preset is True or preset == "default":
        return forward, {}
    if preset not in COMPILE_PRESETS:
        raise ConfigError(f"unknown compile preset {preset!r}; one of {', '.join(COMPILE_PRESETS)}")
    if preset in TORCH_MODES:
        return forward, {"mode": preset}
    # fused: the Deep Decoder's output_conv as a reduction (nets.output_conv says why), and on
    # a GPU inductor's recompute thresholds (FUSED_OPTIONS); the CPU keeps its own thresholds,
    # where recomputing cost more time than the bytes it saved. The skip net has neither: the
    # thresholds were chosen on the Deep Decoder's graph alone.
    options = {}
    if deep_decoder:
        options = dict(FUSED_OPTIONS) if device_type == "cuda" else {}
        forward = functools.partial(forward, fused=True)
    if preset == "fused-graphs" and device_type == "cuda":
        options["triton.cudagraphs"] = True
    return forward, ({"options": options} if options else {})


RECOMPILE_LIMIT = 128
TORCH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile's own modes, by their names
# "fused": fewer bytes per step (_compile_settings); "fused-graphs": that, replayed as CUDA graphs;
# "triton": the full-size tail as hand-written kernels (tail.py), the head compiled with the
# fused preset's limits (inductor's count of the head at 384x256, k=64, fp32: 148.7 -> 107.0 MB
# a step per image; 108.0 with the small ops between the kernels, now in the same graph);
# "triton-graphs": that whole step, custom ops included, replayed as CUDA graphs
TRITON_PRESETS = ("triton", "triton-graphs")
COMPILE_PRESETS = ("default",) + TORCH_MODES + ("fused", "fused-graphs") + TRITON_PRESETS
# [k, T] tiles of several tensors live in a program's registers at once. Compiled for sm_90 on
# the CPU (tail.sm90_report): at k=64 no pass spills; at k=128 passes 3-5 spill 40-1284
# bytes with the default launch and take 208-213 KB of shared memory in TF32,
# so a 32-pixel tile would not fit the H200's 227 KB. Until a GPU measures k=128, 64.
TAIL_MAX_CHANNELS = 64
GRAPH_MODES = TORCH_MODES + ("fused-graphs", "triton-graphs")  # the presets that use CUDA graphs
# Recompute instead of store: inductor writes an intermediate out once it is read more than
# 4 times, is 30 ops deep or has accumulated 8 reads (its GPU defaults). The upsampling's
# shifted copies pass those limits, so each 2x upsampled activation was written and read back
# whole; with these limits the kernels after it recompute it from the quarter-size tensor.
# Inductor's own byte count of a step's compiled graphs (GPU lowering, 384x256, k=64, fp32):
# 29.0 k x pixels floats at its defaults, 26.0 with output_conv fused, 19.3 with both
# (benchmarks/NOTES.md).
FUSED_OPTIONS = {"realize_reads_threshold": 16, "realize_opcount_threshold": 200,
                 "realize_acc_reads_threshold": 64}


class _EagerOnFailure:
    """Calls the compiled forward; if its first call raises, warns and uses the eager one."""

    def __init__(self, compiled_fn, eager_fn):
        self.fn, self.eager, self.tried = compiled_fn, eager_fn, False

    def __call__(self, *args):
        if self.tried:
            return self.fn(*args)
        try:
            return self._first(self.fn(*args))
        except Exception as e:  # noqa: BLE001 - any compile failure
            failure = self.reason(e)
        # outside the handler, so the failed compile's frames are freed before the retry
        out = self.eager(*args)  # an error of the input, not the compiler's, raises again here
        self._warn(failure)
        return self._first(out)

    def give_up(self, failure: str):
        """The compiled program failed after its first forward (in its first backward, for
        the reason given): eager kernels from now on, with the same warning."""
        self._warn(failure)
        self.tried = True

    @staticmethod
    def reason(e) -> str:
        # dynamo wraps the compiler's own error; its first line is the informative one
        inner = getattr(e, "inner_exception", None) or e
        return f"{type(inner).__name__}: {(str(inner).splitlines() or [''])[0][:200]}"

    def _warn(self, failure: str):
        warnings.warn(f"torch.compile failed ({failure}); fitting with eager kernels")
        self.fn = self.eager

    def _first(self, out):
        self.tried = True
        return out
