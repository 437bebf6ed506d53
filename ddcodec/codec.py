"""The public API: encode() and decode() (from decoding.py), and their file-path helpers.

    encode:  image -> fit a Deep Decoder -> steps -> QAT -> integers -> range coder -> .ddc
    decode:  .ddc -> integers * steps -> network, z = noise(seed) -> one forward pass -> image

The PSNR that encode() reports is measured by decoding the bytes it produced, so it is the
PSNR a user gets from decode() on any machine or device (exact decoding, docs/format.md); with
a mask or a scale it is measured through the degradation (fidelity_psnr).
"""
import inspect
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from . import bitstream, entropy, tiles
from .checks import a_path, an_output, flag, integer
from .degrade import Degradation
from .decoding import _unorient, decode, info, load_model, read_file, resolve_device  # noqa: F401 - info, load_model: still importable from here
from .errors import ConfigError, FormatError, ImageError, PartialBankError
from .fit import ADAM_BETAS, FitConfig, fell_back, mse_per_image, optimise
from .images import beside, check_ddc_name, check_image, check_image_name, check_output, decoded_name, image_bytes, read_image, write_atomic
from .metrics import bpp as bits_per_pixel, psnr
from .nets import Architecture, build, crop, layers_for, macs, param_count, seeded_input, work
from .adaround import learn_rounding
from .rate import budgets_for_psnr, budgets_for_rate, channels_for_image
from .quant import QuantConfig, code_floor, quantize, rounding_steps, search_steps, steps_tensor, straight_through


@dataclass
class EncodeResult:
    data: bytes = field(repr=False)
    width: int
    height: int
    psnr: float  # dB, decoded 8-bit output against the 8-bit input
    psnr_float: float  # dB, the unquantized network's 8-bit output
    bpp: float  # from len(data)
    seconds: float  # wall clock of the encode (fit, quantization, coding); for a bank, divided by its images
    device: str
    params: int
    arch: Architecture

    @property
    def bytes(self) -> int:
        return len(self.data)

    def summary(self) -> dict:
        """The result as JSON-ready values. An exact fit's PSNR is infinite, which JSON cannot
        hold (json.dumps would write a bare Infinity): it is None here."""
        d = {k: v for k, v in asdict(self).items() if k not in ("data", "arch")}
        d.update(bytes=self.bytes, arch=asdict(self.arch))
        for key in ("psnr", "psnr_float"):
            d[key] = d[key] if math.isfinite(d[key]) else None
        return d


def encode(image, channels: Optional[int] = 64, layers: int = 6, fit: FitConfig = FitConfig(),
           quant: QuantConfig = QuantConfig(), device: str = "auto", progress=None,
           arch: str = "deep-decoder", degradation: Degradation = None, tile=None) -> EncodeResult:
    """Encode one image (uint8 array, PIL image or path) into .ddc bytes.

    With a degradation (a mask, a super-resolution scale) the fit sees the image through it,
    and the file decodes to the restored image (DIP): see ddcodec.degrade and restore().
    With tile=(width, height) the image is coded as a grid of Deep Decoders of about that
    size, each of width channels (None: from quant.target_bpp); tile="auto" picks the size
    from the image and the target: see ddcodec.tiles.
    arch="skip" (DIP's skip net, for comparison) takes channels and layers as given, 64 and 6
    unless passed; `ddc encode --arch skip` uses DIP's 128 channels and 5 scales
    (ddcodec.restore.DEFAULTS["skip"]), the 2.2 M-parameter net the README's figures are for.
    progress: None, or a callable called every few steps as progress(stage, done, total, loss,
    psnr), stage naming the part of the encode ("fit", "qat", "pilot" for the tiles' rate
    allocation, "distil" for denoising), loss and psnr the bank's mean."""
    return encode_bank([image], channels, layers, fit, quant, device, progress, arch, degradation, tile)[0]


def encode_bank(images, channels: Optional[int] = 64, layers: int = 6, fit: FitConfig = FitConfig(),
                quant: QuantConfig = QuantConfig(), device: str = "auto", progress=None,
                arch: str = "deep-decoder", degradation: Degradation = None, tile=None) -> list:
    """Encode B images of one size and channel count as one bank: one fit, B files. With a
    tile size, the images may differ in size: their tiles are banked by size instead."""
    check_arguments(channels, layers, fit, quant, progress, tile, degradation, arch)
    images = _sequence(images)
    if tile is not None and not isinstance(tile, str):
        tile = (int(tile[0]), int(tile[1]))  # numpy's integers or an array, as plain ints
    if len(images) == 0:
        return []
    if tile is not None:
        if arch != "deep-decoder" or (degradation is not None and (degradation.mask is not None or degradation.scale > 1)):
            raise ConfigError("tiles apply to compression with the Deep Decoder, not to restoration or --arch skip")
        return _encode_tiled(images, channels, layers, fit, quant, device, progress, tile)
    if channels is None:
        if quant.target_bpp is None:
            raise ConfigError("channels=None needs a target bpp to choose k from")
        shape = _as_array(images[0]).shape  # the file holds the network's output: x scale for super-resolution
        channels = channels_for_image(quant.target_bpp, (degradation or Degradation()).output_size(*shape[:2]) + shape[2:],
                                      layers)
    t0 = time.perf_counter()
    bank = fit_bank(images, channels, layers, fit, device, progress, arch, degradation)
    try:
        results = quantize_bank(bank, quant, progress)
    except PartialBankError as e:
        _share_seconds(e.results, t0)
        raise
    return _share_seconds(results, t0)


PROGRESS_CALL = "progress(stage, done, total, loss, psnr)"


def _check_progress(progress) -> None:
    """The callback is called as PROGRESS_CALL every few steps; one that cannot take those
    arguments would fail only once the fit is under way."""
    if not callable(progress):
        raise ConfigError("progress must be a callable or None")
    try:
        sig = inspect.signature(progress)
    except (TypeError, ValueError):  # some builtins have none: they are taken on trust
        return
    try:
        sig.bind("fit", 10, 3000, 0.01, 20.0)
    except TypeError:
        raise ConfigError(f"progress is called as {PROGRESS_CALL} (stage: 'fit', 'qat', ...; "
                          f"loss and psnr: the bank's mean), which {sig} cannot take") from None


def _check_optimizer(fit: FitConfig, arch: str) -> None:
    if fit.optimizer == "muon" and arch != "deep-decoder":  # its rule picks the Deep Decoder's tensors by name
        raise ConfigError("optimizer 'muon' (Muon) steps the Deep Decoder's block convolutions; the skip net fits with Adam")
    if fit.margin and arch != "deep-decoder":  # the skip net's canvas is its own (nets.canvas)
        raise ConfigError("a margin (--margin on) applies to the Deep Decoder; the skip net fits its image as it is")


def _margin_hint(margin: bool) -> str:
    return ", or --margin off" if margin else ""


def with_margin(net: Architecture, height: int, width: int, fit: FitConfig) -> Architecture:
    """net with the margin where fit asks for one (FitConfig.margin_for) and it means something:
    a net of one or two blocks has less than a quarter of an input pixel to spare (nets.canvas
    pads nothing), and its file would be version 5 for a function version 3 writes. The default
    (margin None) also keeps the corner where the larger canvas would pass the reader's limits
    the corner keeps to (k=64 at 2048x2048: 2080x2080 is over MAX_WORK), so an image that
    encoded before the margin still does; an asked-for margin is checked and refused there."""
    if net.kind != "deep-decoder" or net.upsamplings < 2 or not fit.margin_for(net.channels):
        return net
    wide = replace(net, margin=True)
    if fit.margin is None and (work(wide, height, width) > bitstream.MAX_WORK
                               or macs(wide, height, width) > bitstream.MAX_MACS):
        return net
    return wide


def _sequence(images) -> list:
    """encode_bank's images as a list. One image given alone would iterate as something else:
    an [H, W, 3] array as H grey images of W x 3 pixels, a path as its characters."""
    one = "encode_bank takes a sequence of images; for one image use encode(), or pass [image]"
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise ConfigError(one)
    if isinstance(images, np.ndarray) and (images.ndim < 3 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))):
        # a stack [B, H, W] of grey images stays; [H, W, 1/3/4] is one image's shape
        raise ConfigError(f"{one} (an array of shape {images.shape} is one image)")
    try:
        return list(images)  # any iterable: a generator has no len()
    except TypeError:
        raise ConfigError(f"encode_bank takes a sequence of images, not {type(images).__name__}") from None


def _share_seconds(results, t0) -> list:
    """Each image's share of the bank's wall clock since t0 (None: an image that failed)."""
    seconds = time.perf_counter() - t0
    for r in results:
        if r is not None:
            r.seconds = seconds / len(results)
    return results


def check_arguments(channels, layers, fit=FitConfig(), quant=QuantConfig(), progress=None, tile=None,
                    degradation=None, arch: str = "deep-decoder") -> None:
    """encode_bank's arguments, checked before any work. Public so that a front end fitting many
    banks (the CLI, ddcodec.collection) refuses a bad setting once, up front, instead of failing
    every bank with it."""
    if not isinstance(fit, FitConfig) or not isinstance(quant, QuantConfig):
        raise ConfigError("fit must be a FitConfig and quant a QuantConfig")
    if channels is not None:
        integer("channels", channels, 1, 1024)
    integer("layers", layers, 1, 12)
    if progress is not None:
        _check_progress(progress)
    _check_optimizer(fit, arch)
    if degradation is not None and not isinstance(degradation, Degradation):
        raise ConfigError(f"degradation must be a Degradation or None, got {type(degradation).__name__}")
    if tile is not None and not (isinstance(tile, str) and tile == "auto"):  # an array's != is elementwise
        try:
            w, h = tile
            integer("tile width", w, 8, bitstream.MAX_SIDE)
            integer("tile height", h, 8, bitstream.MAX_SIDE)
        except (TypeError, ValueError):
            raise ConfigError(f"tile must be None, 'auto' or (width, height), got {tile!r}") from None


@dataclass
class FittedBank:
    """A fitted bank before quantization: what quantize_bank needs to write its files."""
    model: torch.nn.Module
    z: torch.Tensor
    loss_fn: object  # output -> per-member losses [B]
    originals: list  # the images as given
    flags: list  # per member: FLAG_TRANSPOSED or 0
    arch: Architecture
    seed: int
    size: tuple  # (H, W) of the network output, in the bank's orientation
    degradation: Degradation
    float_out: np.ndarray  # the unquantized network's uint8 output
    average: Optional[torch.Tensor] = None  # [B, c, H, W] in [0, 1]: FitConfig.average's result
    iters: int = 0  # fitting steps run (fewer than FitConfig.iters after an early stop)
    betas: tuple = ADAM_BETAS  # the fit's Adam decays, which the fine-tuning keeps
    fit: FitConfig = FitConfig()  # the recipe, whose compile rule the fine-tuning follows too
    compression: bool = True
    compiled: Union[bool, str] = False  # the fit's torch.compile setting (FitConfig.compile_for)


def planned_net(arch: str, channels: int, layers: int, height: int, width: int, grey: bool,
                fit: FitConfig) -> Architecture:
    """The network fit_bank fits to a height x width output: the Deep Decoder with fewer blocks
    where a side of at most 2^(d-1) pixels takes fewer (layers_for), and the margin where fit
    gives it one (with_margin)."""
    if arch == "deep-decoder":
        layers = layers_for(layers, height, width)
    return with_margin(Architecture(arch, channels, layers, 1 if grey else 3), height, width, fit)


def fit_bank(images, channels: int = 64, layers: int = 6, fit: FitConfig = FitConfig(),
             device: str = "auto", progress=None, arch: str = "deep-decoder",
             degradation: Degradation = None, stage: str = "fit") -> FittedBank:
    """Fit one network per image, all at once (the first half of encode_bank). stage names the
    fit to the progress callback ("pilot" for the tiles' rate allocation)."""
    deg = degradation or Degradation()
    originals = [_as_array(im) for im in images]
    imgs, flags = _orient(originals)
    if deg.mask is not None and (len(imgs) > 1 or flags[0]):
        raise ConfigError("a mask applies to a single image")
    h, w = imgs[0].shape[:2]
    H, W = deg.output_size(h, w)
    compression = arch == "deep-decoder" and deg.mask is None and deg.scale == 1
    _check_optimizer(fit, arch)  # fit_bank is public too
    net = planned_net(arch, channels, layers, H, W, imgs[0].ndim == 2, fit)
    channels, layers = net.channels, net.layers  # checked, and Python's ints (a numpy uint8 k overflowed below)
    if max(H, W) > bitstream.MAX_SIDE or H * W > bitstream.MAX_PIXELS:
        raise ImageError(f"{W}x{H}: more than the format holds (sides up to {bitstream.MAX_SIDE}, "
                         f"{bitstream.MAX_PIXELS} pixels)")
    if work(net, H, W) > bitstream.MAX_WORK:  # never fit what the reader would refuse
        raise ImageError(f"{W}x{H} at k={channels} with {layers} blocks exceeds the decoder's limit of "
                         f"k*pixels <= {bitstream.MAX_WORK} (on the padded size); use a smaller -k, "
                         f"image or --layers{_margin_hint(net.margin)}")
    if macs(net, H, W) > bitstream.MAX_MACS:
        raise ImageError(f"{W}x{H} at k={channels} with {layers} blocks exceeds the decoder's limit of "
                         f"{bitstream.MAX_MACS} multiply-adds; use a smaller -k, image or --layers{_margin_hint(net.margin)}")
    dev = resolve_device(device)
    target = torch.from_numpy(np.stack([_chw(im) for im in imgs])).to(dev).float() / 255
    weight = deg.weight((h, w), dev)
    seeds = [fit.seed] * len(imgs)
    z = torch.stack([seeded_input(net, H, W, s) for s in seeds]).to(dev)
    live = fit.live_first_block_for(compression, channels, z.shape[2] * z.shape[3])
    model = build(net, seeds, live).to(dev)
    loss_fn = lambda out: mse_per_image(deg.apply(crop(net, out, H, W)), target, weight)  # noqa: E731
    ema = _Average(fit.average)
    ran = [fit.iters]

    def stop(done, losses):  # FitConfig.stop_mse: judged on the average, when there is one
        if ema.value is not None:
            losses = loss_fn(ema.value)
        reached = bool((losses <= fit.stop_mse).all())
        if reached:
            ran[0] = done
        return reached

    schedule = fit.schedule(channels, compression)
    compile_ = fit.compile_for(dev, compression, len(imgs) * H * W * channels * fit.iters)
    optimise(model, z, loss_fn, fit.iters, **schedule, input_noise=fit.input_noise,
             progress=_stage(progress, stage), noise_seed=fit.seed, mode=fit.precision, compile=compile_,
             observe=ema if fit.average else None, stop=stop if fit.stop_mse else None)
    with torch.no_grad():
        float_out = _to_uint8(crop(net, model(z), H, W))
    return FittedBank(model, z, loss_fn, originals, flags, net, fit.seed, (H, W), deg, float_out,
                      None if ema.value is None else crop(net, ema.value, H, W), ran[0], schedule["betas"], fit,
                      compression, False if fell_back(model) else compile_)


class _Average:
    """Exponential average of the outputs over a fit (DIP's exp_weight): the average of many
    iterates holds less of the noise than any one of them. The decay ramps up as
    (1 + t) / (10 + t) to its value, so the poor first outputs are forgotten quickly."""

    def __init__(self, decay: float):
        self.decay, self.value, self.t = decay, None, 0

    def __call__(self, out: torch.Tensor) -> None:
        out = out.clamp(0, 1)
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        self.t += 1
        self.value = out.clone() if self.value is None else self.value.mul_(d).add_(out, alpha=1 - d)


def quantize_bank(bank: FittedBank, quant: QuantConfig = QuantConfig(), progress=None, targets=None) -> list:
    """Steps, quantization-aware fine-tuning, entropy coding: a fitted bank -> EncodeResults
    (the second half of encode_bank). It replaces a Deep Decoder's bank.model and bank.arch by
    their folded form, and changes the weights. targets: a bpp per member instead of
    quant.target_bpp for all (the tiles of an image, each with its share of the rate)."""
    if bank.arch.kind == "deep-decoder" and not bank.arch.folded:
        # files hold the folded form (format 3): the same function with k fewer weights per
        # block and one header entry for all biases instead of 2d for the scales and shifts
        bank.model = bank.model.fold()
        bank.arch = bank.model.arch
    model, z, loss_fn = bank.model, bank.z, bank.loss_fn
    write = lambda b, codes_b: _write_member(model, b, codes_b, bank.arch, bank.seed,  # noqa: E731
                                             bank.flags[b], *bank.size)
    view = lambda out: crop(bank.arch, out, *bank.size)  # noqa: E731
    budgets, short = None, [None] * z.shape[0]
    if quant.target_bpp is not None:
        budgets = budgets_for_rate(model, z, loss_fn, quant, bank.size[0] * bank.size[1], write, targets, view)
    elif quant.target_psnr is not None:
        budgets, short = budgets_for_psnr(model, z, loss_fn, quant.target_psnr)
    codes = search_steps(model, z, loss_fn, quant, budgets, view=view)  # [T, B]
    steps = steps_tensor(codes, z.device)
    rate_bound = quant.target_bpp is not None
    before = [t.detach().clone() for _, t in model.named_tensors()] if rate_bound else None
    H, W = bank.size
    # After a compiled fit the fine-tuning compiles too: it runs the fit's compiled program
    # (compiling.compiled), so that costs no second compile (but for the CUDA-graph presets, whose
    # folded net compiles its own forward); else its own work decides. A fit whose compile
    # failed counts as eager, so the fine-tuning does not fail and warn a second time.
    compile_ = bank.compiled or bank.fit.compile_for(
        z.device, bank.compression, z.shape[0] * H * W * bank.arch.channels * quant.qat_iters)
    optimise(model, z, loss_fn, quant.qat_iters, quant.qat_lr,
             transform=lambda p: straight_through(p, steps), progress=_stage(progress, "qat"),
             betas=bank.betas, mode=bank.fit.precision, compile=compile_)  # the fit's precision
    # The steps were bounded by the fitted weights' range (the coder's alphabet); the
    # fine-tuning may widen a tensor past it, most of all one that was near zero and got a fine
    # step (a fit of 0 iterations leaves the folded biases at exactly 0): coarsen just those.
    floor = code_floor([t for _, t in model.named_tensors()])
    searched, codes = codes, np.maximum(codes, floor)
    unrounded = None  # the fine-tuned weights, for a PSNR target's finer steps (_meet_psnr)
    rounds = rounding_steps(quant, bank.fit.iters)
    if rounds and bank.compression:
        unrounded = [t.detach().clone() for _, t in model.named_tensors()]
        # each weight's integer below or above, learned on these steps; not for restoration,
        # whose loss is against the degraded image (its fit stops early so as not to fit that)
        learn_rounding(model, z, loss_fn, steps_tensor(codes, z.device), rounds, quant.round_lr,
                       quant.round_weight, mode=bank.fit.precision, compile=compile_,
                       progress=_stage(progress, "round"))
        # an integer above its nearest may pass the alphabet's end: that tensor takes a coarser step
        floor = np.maximum(floor, code_floor([t for _, t in model.named_tensors()]))
        codes = np.maximum(codes, floor)
    results = []
    for b, img in enumerate(bank.originals):
        if short[b]:  # below a PSNR target: its bank-mates are still written
            results.append(None)
            continue
        data = write(b, codes[:, b])
        target = targets[b] if targets is not None else quant.target_bpp
        if rate_bound and 8 * len(data) > target * bank.size[0] * bank.size[1]:
            with torch.no_grad():  # fine-tuning moved the integers past the budget: undo it
                for (_, t), old in zip(model.named_tensors(), before):
                    t[b].copy_(old[b])
            codes[:, b] = searched[:, b]  # the steps the search found within the budget for these weights
            data = write(b, codes[:, b])
        decoded = decode(data, device=str(z.device))
        if quant.target_psnr is not None:
            data, decoded = _meet_psnr(quant.target_psnr, data, decoded, img, bank, b, codes, floor, write, unrounded)
        results.append(EncodeResult(
            data, decoded.shape[1], decoded.shape[0], fidelity_psnr(decoded, img, bank.degradation),
            fidelity_psnr(_unorient(bank.float_out[b], bank.flags[b]), img, bank.degradation),
            bits_per_pixel(len(data), decoded.shape[1], decoded.shape[0]), 0.0, str(z.device),
            param_count(bank.arch), bank.arch))
    if any(short):
        raise PartialBankError(results, short)
    return results


def _encode_tiled(images, channels, layers, fit, quant, device, progress, tile) -> list:
    """Every image split into its grid, each image's tiles packed into one file. With k chosen
    from a rate target, the rate is allocated between an image's tiles (ddcodec.tiles.allocate,
    from a short pilot fit), each tile's k follows its share, and tiles of one size and k are
    fitted as one bank; else every tile is fitted at k = channels, in banks by size."""
    t0 = time.perf_counter()
    originals = [_as_array(im) for im in images]
    grids = [tiles.grid_shape(im.shape[0], im.shape[1], tiles.resolve(tile, quant.target_bpp, *im.shape[:2]))
             for im in originals]
    for im, (rows, cols) in zip(originals, grids):  # the container's own bounds, before the pilot fit
        problem = tiles.grid_problem(im.shape[1], im.shape[0], rows, cols)
        if problem:
            raise ImageError(f"{problem}: it cannot be stored")
    pieces = {(i, j): np.ascontiguousarray(p) for i, (im, (rows, cols)) in enumerate(zip(originals, grids))
              for j, p in enumerate(tiles.split(im, rows, cols))}
    targets = None
    if channels is None:
        if quant.target_bpp is None:
            raise ConfigError("channels=None needs a target bpp to choose k from")
        for im, (rows, cols) in zip(originals, grids):
            tiles.check_rate(quant.target_bpp, im.shape[0], im.shape[1], rows, cols)
        targets = _tile_targets(pieces, grids, layers, fit, quant.target_bpp, device, progress)
    elif quant.target_bpp is not None:  # k given: every tile at the image's rate, less the container's room
        targets = {(i, j): _room(quant.target_bpp, im.shape[0], im.shape[1], rows, cols)
                   for i, (im, (rows, cols)) in enumerate(zip(originals, grids)) for j in range(rows * cols)}
    groups = {}  # (bank key, k) -> tile keys
    for key, p in pieces.items():
        k = channels or channels_for_image(targets[key], p.shape, layers)
        groups.setdefault((bank_key(p.shape), k), []).append(key)

    def problems(fit):  # never fit what the reader would refuse: an image's tiles share its budgets
        spent = [(0, 0, 0)] * len(originals)
        for (_, k), keys in groups.items():
            for i, j in keys:
                p = pieces[i, j]
                member = replace(planned_net("deep-decoder", k, layers, *p.shape[:2], p.ndim == 2, fit),
                                 folded=True)  # as fit_bank builds it and the file holds it
                spent[i] = tiles.add_cost(spent[i], member, *p.shape[:2])
        return [tiles.budget_problem(total, bitstream.MAX_WORK, bitstream.MAX_MACS) for total in spent]

    if fit.margin is None and any(problems(fit)):  # as with_margin: the default keeps the corner where
        fit = replace(fit, margin=False)           # the margins' canvases would pass the shared budgets
    for im, problem in zip(originals, problems(fit)):
        if problem:
            raise ImageError(f"{im.shape[1]}x{im.shape[0]}: its tiles together would take {problem}; "
                             "use a smaller -k, image or --layers" + _margin_hint(fit.margin))
    coded, failed = {}, {}  # failed: image -> the first of its tiles' errors
    for (_, k), keys in groups.items():
        bank = fit_bank([pieces[key] for key in keys], k, layers, fit, device, progress)
        try:
            out = quantize_bank(bank, quant, progress, None if targets is None else [targets[key] for key in keys])
        except PartialBankError as e:  # tiles below a PSNR target fail their images alone
            out = e.results
            for (i, j), error in zip(keys, e.errors):
                if error:
                    failed.setdefault(i, f"tile {j}: {error}")
        coded.update(zip(keys, out))
    results = []
    for i, (im, (rows, cols)) in enumerate(zip(originals, grids)):
        if i in failed:
            results.append(None)
            continue
        parts = [coded[i, j] for j in range(rows * cols)]
        data = parts[0].data if len(parts) == 1 else tiles.pack(im.shape[1], im.shape[0], rows, cols,
                                                                [r.data for r in parts])
        decoded = decode(data, device=parts[0].device)  # exact: the same pixels on any device
        # the float PSNR of the whole from the tiles': their MSEs weighted by their pixels
        mse = sum(r.width * r.height * 10 ** (-r.psnr_float / 10) for r in parts) / (im.shape[0] * im.shape[1])
        results.append(EncodeResult(
            data, im.shape[1], im.shape[0], psnr(decoded, im), -10 * math.log10(mse) if mse > 0 else math.inf,
            bits_per_pixel(len(data), im.shape[1], im.shape[0]), 0.0, parts[0].device,
            sum(r.params for r in parts), parts[0].arch))
    _share_seconds(results, t0)
    if failed:
        raise PartialBankError(results, [failed.get(i) for i in range(len(originals))])
    return results


def _meet_psnr(target, data, decoded, img, bank, b, codes, floor, write, unrounded=None):
    """A PSNR target is a budget on the float network's loss; the decoded 8-bit file can land a
    little below it (by ~0.001 dB). Member b's steps are made finer, an eighth of an octave at a
    time, until its decoded file reaches the target (or every step is at the coder's floor).
    unrounded: the weights before the learned rounding, whose integers belong to the old steps:
    finer steps round these (the learned weights sit on the old grid, and no finer step gets
    closer to the fit than they are)."""
    dev = str(bank.z.device)
    if unrounded is not None and fidelity_psnr(decoded, img, bank.degradation) < target:
        with torch.no_grad():
            for (_, t), u in zip(bank.model.named_tensors(), unrounded):
                t[b].copy_(u[b])
    while fidelity_psnr(decoded, img, bank.degradation) < target and (codes[:, b] > floor[:, b]).any():
        codes[:, b] = np.maximum(codes[:, b] - 1, floor[:, b])
        data = write(b, codes[:, b])
        decoded = decode(data, device=dev)
    return data, decoded


def _room(bpp: float, height: int, width: int, rows: int, cols: int) -> float:
    """The bpp an image's tiles may share: its target less the tiled container's own bytes
    beyond its members' (a grid of one tile is written as a plain file: all of it)."""
    if rows * cols == 1:
        return bpp
    return bpp - 8 * tiles.container_excess(width, height, rows, cols) / (height * width)


def _tile_targets(pieces: dict, grids, layers, fit: FitConfig, bpp: float, device, progress=None) -> dict:
    """Each tile's bpp: a pilot fit of every tile at the image's k for a few hundred steps
    measures how hard it is; tiles.allocate turns the MSEs into equal-slope shares."""
    by_key = {}
    for key, p in pieces.items():
        if grids[key[0]] != (1, 1):  # a grid of one tile takes the whole target: no pilot
            by_key.setdefault(bank_key(p.shape), []).append(key)
    mse = {}
    pilot = replace(fit, iters=min(fit.iters, tiles.PILOT_ITERS))
    for keys in by_key.values():
        shape = pieces[keys[0]].shape
        bank = fit_bank([pieces[key] for key in keys], channels_for_image(bpp, shape, layers), layers, pilot, device,
                        progress, stage="pilot")
        with torch.no_grad():
            mse.update(zip(keys, bank.loss_fn(bank.model(bank.z)).double().cpu().numpy()))
    targets = {}
    for i, (rows, cols) in enumerate(grids):
        keys = [(i, j) for j in range(rows * cols)]
        if len(keys) == 1:
            targets[keys[0]] = bpp
            continue
        height = sum(pieces[i, j * cols].shape[0] for j in range(rows))  # the image's size, from its tiles
        width = sum(pieces[i, j].shape[1] for j in range(cols))
        shares = tiles.allocate([mse[key] for key in keys], [pieces[key].shape[0] * pieces[key].shape[1] for key in keys],
                                _room(bpp, height, width, rows, cols))
        targets.update(zip(keys, shares))
    return targets


def _stage(progress, name):
    return partial(progress, name) if progress else None


def fidelity_psnr(decoded: np.ndarray, observed: np.ndarray, deg: Degradation) -> float:
    """PSNR of the decoded image against what the encoder saw: the image itself for plain
    compression; through the Lanczos downsampler for super-resolution; known pixels only
    for inpainting. Restoration quality against a ground truth is the benchmark's job."""
    if deg.scale > 1:
        x = torch.from_numpy(_chw(decoded).astype(np.float32))[None]
        decoded = _to_uint8(deg.apply(x / 255))[0]
    if deg.mask is not None:
        return psnr(decoded[deg.mask], observed[deg.mask])
    return psnr(decoded, observed)


def bank_key(shape) -> tuple:
    """Images with equal keys can share a bank: same size up to transposition, same channels."""
    return (tuple(sorted(shape[:2])),) + tuple(shape[2:])


def _orient(imgs):
    """Transpose images whose shape is the first one's transposed, so portrait and landscape
    photos of one size share a bank; the file's flag tells the decoder to transpose back."""
    ref = imgs[0].shape
    out, flags = [], []
    for im in imgs:
        if im.shape == ref:
            out.append(im), flags.append(0)
        elif im.shape[:2] == ref[1::-1] and im.shape[2:] == ref[2:]:
            out.append(np.ascontiguousarray(im.swapaxes(0, 1))), flags.append(bitstream.FLAG_TRANSPOSED)
        else:
            raise ImageError("a bank needs images of one size (up to transposition) and channel count")
    return out, flags


def _write_member(model, b, codes, arch, seed, flags, h, w) -> bytes:
    """One bank member's .ddc bytes; h x w is the network output in the bank's orientation."""
    steps = steps_tensor(codes[:, None], torch.device("cpu"))
    ints = [quantize(t.detach()[b:b + 1].cpu(), s)[0].numpy().astype(np.int64)
            for (_, t), s in zip(model.named_tensors(), steps)]
    models = [entropy.fit_model(q) for q in ints]
    if flags & bitstream.FLAG_TRANSPOSED:
        h, w = w, h
    header = bitstream.Header(w, h, arch, seed, tuple(int(c) for c in codes), tuple(models), flags)
    return bitstream.pack(header, entropy.encode(ints, models))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, c, H, W] in [0, 1] -> uint8 [B, H, W, c] (or [B, H, W] for c = 1)."""
    u = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return u[..., 0] if u.shape[-1] == 1 else u


def _chw(img: np.ndarray) -> np.ndarray:
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


def _as_array(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):  # os.DirEntry too, as encode_file takes
        if os.fspath(image) in ("", b""):  # Path("") is ".", which would read as a folder
            raise ImageError("the image path is empty")
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        from .images import _refuse_what_pixels_lose, from_pil
        _refuse_what_pixels_lose(image, "image")  # as read_image refuses it from a file
        return from_pil(image)
    if not isinstance(image, np.ndarray):  # check_image's message speaks of arrays alone
        raise ImageError(f"image must be a uint8 numpy array, a PIL image or a path, not {type(image).__name__}")
    return check_image(image)


def encode_file(src, dst=None, force: bool = False, **kwargs) -> EncodeResult:
    """Encode the image at src into dst (default: src with .ddc), written atomically; an
    existing dst needs force, and the input is never overwritten. kwargs go to encode()."""
    src, force = a_path("src", src), flag("force", force)
    dst = an_output("dst", dst) if dst is not None else beside(src, src.stem + ".ddc")
    check_output(check_ddc_name(dst), force, inputs=[src])  # before the fit, not after it
    result = encode(read_image(src), **kwargs)
    write_atomic(dst, result.data, force, inputs=[src])
    return result


def decode_file(src, dst=None, force: bool = False, device: str = "cpu") -> np.ndarray:
    """Decode the .ddc file at src into an image file at dst (default: <stem>.decoded.png; the
    suffix picks the format), written atomically; the input is never overwritten."""
    src, force = a_path("src", src), flag("force", force)
    dst = an_output("dst", dst) if dst is not None else decoded_name(src)
    check_output(check_image_name(dst), force, inputs=[src])
    data = read_file(src)
    try:
        img = decode(data, device=device)
    except FormatError as e:  # the same error, naming the file it came from
        raise type(e)(f"{src}: {e}") from None
    write_atomic(dst, image_bytes(img, dst), force, inputs=[src])
    return img
