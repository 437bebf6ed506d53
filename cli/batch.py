"""`ddc encode` for one image or many: expand files, folders and globs, check outputs before
any fit, group images of one size (up to transposition) into banks, fit each bank once with
one progress bar overall, and report a bad file without losing the others."""
import glob
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import click

import ddcodec
from ddcodec import FitConfig, QuantConfig, restore, tiles
from ddcodec.codec import bank_key, check_arguments
from ddcodec.collection import IMAGE_SUFFIXES
from ddcodec.degrade import Degradation, mask_from_image
from ddcodec.errors import (ConfigError, DDCError, ImageError, OutputError, OutputExistsError, PartialBankError,
                            bank_out_of_memory)
from ddcodec.images import beside, check_ddc_name, check_output, missing_folders, read_image, write_atomic

from .interrupt import raise_if_interrupted
from .progress import FitProgress


def expand(args) -> tuple:
    """-> (paths, many). Files as given; folders -> their image files; patterns -> the image
    files they match (sorted). A file named twice (or by a folder and a pattern both) is
    encoded once. many: more than one input named, or any folder or pattern, so that the
    output is a folder; a file whose own name holds glob characters is one file. os.path's
    probes, not Path's: they say False for a name too long, where Path's raise."""
    out, many = [], False
    for a in args:
        if not a:  # Path("") is ".": an empty name must not mean the current folder
            raise ImageError("an input is an empty file name")
        if os.path.isdir(a):
            out += _images_in(Path(a).iterdir())
            many = True
        elif not os.path.lexists(a) and glob.has_magic(a):
            matches = _images_in(Path(m) for m in glob.glob(a))
            if not matches:  # a pattern that matches nothing is a mistyped input, not an empty one
                raise ImageError(f"{a}: no image file matches this pattern")
            out += matches
            many = True
        else:
            out.append(Path(a))
    if not out:
        raise ImageError("no input images found")
    seen, paths = set(), []
    for p in out:
        if (real := os.path.realpath(p)) not in seen:
            seen.add(real)
            paths.append(p)
    return paths, many or len(out) > 1


def _images_in(candidates) -> list:
    """The image files among what a folder holds or a pattern matched: a pattern like dir/*
    also matches the .ddc files of an earlier run, and folders."""
    return sorted(q for q in candidates if q.suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(q))


def _outputs(paths, output, many: bool) -> list:
    if not many:
        return [check_ddc_name(output) if output is not None else beside(paths[0], paths[0].stem + ".ddc")]
    if output is None:
        return [beside(p, p.stem + ".ddc") for p in paths]
    if os.path.lexists(output) and not os.path.isdir(output):
        raise ConfigError(f"{output} is a file; several inputs need an output folder")
    return [output / (p.stem + ".ddc") for p in paths]


def _make_folder(folder: Path) -> list:
    """Make the output folder and any missing folders above it -> those this call made, the
    deepest first, so that a run that wrote nothing can remove them again."""
    made = missing_folders(folder)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot make the output folder {folder}: {e.strerror}") from None
    return made


def _remove_if_empty(folders) -> None:
    """A run that wrote nothing (every input bad, or Ctrl-C before the first bank finished)
    leaves no empty folder of its own behind; a folder that was there before stays."""
    for folder in folders:  # deepest first: each rmdir fails, as it should, if anything is in it
        try:
            folder.rmdir()
        except OSError:
            return


def _defaults(arch, restoring, channels, layers, bpp=None):
    if channels is None and bpp is not None:  # the skip net too, as encode_bank does for it
        # k per bank, from the target and the size, for restoration too: its default k=128
        # cannot keep to most targets, which a fit of minutes would only then find
        return None, layers if layers is not None else (5 if arch == "skip" else 6)
    k = channels if channels is not None else (128 if arch == "skip" or restoring else 64)
    return k, layers if layers is not None else (5 if arch == "skip" else 6)


def fit_config(iters, lr, seed, precision, compile_, optimizer, margin: Optional[bool] = None) -> FitConfig:
    """The speed options' values as a FitConfig: --compile unset is "auto", and --optimizer
    auto is None (FitConfig chooses by the task), as is --margin's (main.MARGINS)."""
    return FitConfig(iters=iters, lr=lr, seed=seed, precision=precision,
                     compile="auto" if compile_ is None else compile_,
                     optimizer=None if optimizer == "auto" else optimizer,
                     margin=margin)


def encode_command(images, output, channels, layers, arch, iters, lr, seed, device, quiet, precision, compile_,
                   max_loss, qat_iters, round_iters, bpp, psnr, tile, denoise, mask, scale, bank, max_pixels, force, as_json,
                   folder: bool = False, optimizer: str = "auto", margin: Optional[bool] = None):
    """folder: the output names a folder even for one image (it was given as "out/")."""
    paths, several = expand(images)
    many = several or folder  # the output is a folder
    try:
        outs = _outputs(paths, output, many)
    except DDCError as e:  # a single input's output name: --json still gives it its line
        if not many:
            _json_failure(paths[0], output, e, as_json)
        raise
    if mask is not None and several:
        raise ConfigError("--mask applies to a single image")
    if denoise and (mask is not None or scale > 1):
        raise ConfigError("--denoise cannot be combined with --mask or --scale")
    if denoise and (precision != "fp32" or compile_ or optimizer != "auto"):
        raise ConfigError("--precision, --compile and --optimizer apply to compression and --mask/--scale fits, "
                          "not --denoise")
    deg = Degradation(scale=scale, mask=mask_from_image(read_image(mask)) if mask else None)
    restoring = denoise or mask is not None or scale > 1
    k, d = _defaults(arch, restoring, channels, layers, bpp)
    tile = tiles.tile_for(tile, bpp if k is None else None, not restoring and arch == "deep-decoder")
    if lr is None and restoring:  # else None: by k (fit.default_lr)
        lr = restore.RESTORE_LR
    fit = fit_config(FitConfig.iters if iters is None else iters, lr, seed, precision, compile_, optimizer, margin)
    # learned rounding fits the loss, which for restoration is against the degraded image (the
    # codec rounds only the Deep Decoder's compression fits: the bar counts what it will run)
    rounds = 0 if restoring or arch != "deep-decoder" else round_iters
    quant = QuantConfig(max_loss_db=max_loss, qat_iters=qat_iters, round_iters=rounds,
                        target_bpp=bpp, target_psnr=psnr)
    # settings every bank shares, checked once before any folder is made or image read: a bad
    # -k is one error, not one per image
    check_arguments(k, d, fit, quant, None, tile, arch=arch)
    with output_folder(output if many else None):
        jobs, failed = _read_jobs(paths, outs, many, force, [mask] if mask else [], max_pixels, as_json)
        banks = _banks(jobs, 1 if (denoise or mask is not None) else bank)
        fits = len(banks) if tile is None else sum(tiles.fits_for([j[2].shape for j in g], tile, bpp) for g in banks)
        with FitProgress(fit, quant, quiet or as_json, fits, may_stop=denoise) as bar:
            for group in banks:
                failed += _encode_bank(group, k, d, arch, fit, quant, deg, (iters or 0) if denoise else None,
                                       device, bar, force, as_json, many, tile)
                bar.next_bank()
        if failed:
            raise DDCError(f"{failed} of {len(paths)} images failed")


@contextmanager
def output_folder(folder, made=()):
    """Make the output folder of a run (None: nothing to make), and remove it, with the
    folders made above it, if this run made it and wrote nothing into it. made: folders the
    caller made for the run (a temporary one), removed on the same terms."""
    made = (_make_folder(folder) if folder is not None else []) + list(made)
    try:
        yield
    finally:
        _remove_if_empty(made)


def _read_jobs(paths, outs, many: bool, force: bool, other_inputs, max_pixels, as_json: bool = False):
    """(path, output, image) for every input whose output may be written, read before any fit
    so that a bad file costs nothing; with many inputs a bad one is reported and counted."""
    jobs, failed, claimed = [], 0, set()
    for p, o in zip(paths, outs):
        try:
            if os.path.realpath(o) in claimed:
                raise OutputExistsError(f"another input also maps to {o}")
            check_output(o, force, inputs=paths + other_inputs)
            claimed.add(os.path.realpath(o))
            jobs.append((p, o, read_image(p, max_pixels)))
        except DDCError as e:
            if not many:
                _json_failure(p, o, e, as_json)  # --json: every input a line, a single one too
                raise
            click.echo(f"ddc: skipped {p}: {str(e).removeprefix(f'{p}: ')}", err=True)  # once, not twice
            _json_failure(p, o, e, as_json)
            failed += 1
    return jobs, failed


def _banks(jobs, size) -> list:
    groups = {}
    for job in jobs:
        groups.setdefault(bank_key(job[2].shape), []).append(job)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _encode_bank(group, k, d, arch, fit, quant, deg, denoise, device, bar, force, as_json, many, tile) -> int:
    """Fit one bank and write its files -> how many of its images failed. A failed write
    fails that image alone: its bank-mates' files are still written."""
    try:
        if denoise is not None:  # the fit of `ddc denoise`: stopping rule, output average, distillation
            results = [restore.denoise(group[0][2], arch, k, d, denoise or None, fit.seed, fit.lr,
                                       device, bar.update, quant, fit.margin).result]
        else:
            results = ddcodec.encode_bank([img for _, _, img in group], k, d, fit, quant, device,
                                          bar.update, arch, deg, tile)
        raise_if_interrupted()
        errors = [None] * len(group)
    except PartialBankError as e:  # images below a PSNR target fail alone: their bank-mates are written
        if not many:
            return _failed(group, e, many, as_json)
        raise_if_interrupted()
        results, errors = e.results, e.errors
    except DDCError as e:
        return _failed(group, e, many, as_json)
    except (MemoryError, RuntimeError) as e:  # a bank too large for the device: the next banks may fit
        report = bank_out_of_memory(e, len(group)) if many else None
        if report is None:
            raise
        return _failed(group, report, many, as_json)
    failed = 0
    for job, res, error in zip(group, results, errors):
        src, out, _ = job
        if error:
            failed += _failed([job], error, many, as_json)
            continue
        try:
            write_atomic(out, res.data, force, inputs=[src])
        except DDCError as e:
            failed += _failed([job], e, many, as_json)
            continue
        _report(src, out, res, as_json)
    return failed


def _failed(jobs, error, many: bool, as_json: bool = False) -> int:
    if not many:
        for src, out, _ in jobs:
            _json_failure(src, out, error, as_json)
        raise error
    for src, out, _ in jobs:
        click.echo(f"ddc: failed {src}: {error}", err=True)
        _json_failure(src, out, error, as_json)
    return len(jobs)


def _json_failure(src, out, error, as_json: bool) -> None:
    """With --json, a failed image gets its line too (encode-dir's record): a script reading
    stdout sees every input, not only the ones written."""
    if as_json:
        click.echo(json.dumps({"input": str(src), "output": None if out is None else str(out), "status": "failed",
                               "error": str(error)}))


def _report(src, out, res, as_json):
    if as_json:
        click.echo(json.dumps({"input": str(src), "output": str(out), "status": "written", "error": "",
                               **res.summary()}, allow_nan=False))
    else:
        click.echo(f"{out}: {res.bytes} bytes, {res.bpp:.4f} bpp, PSNR {res.psnr:.2f} dB "
                   f"({res.width}x{res.height}, k={res.arch.channels}, {res.params} params, {res.seconds:.1f} s on {res.device})")
