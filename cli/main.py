"""`ddc`: a thin click front end. Every command parses options and calls the ddcodec API; every
DDCError becomes one line on stderr and exit code 1, Ctrl-C exit code 130."""
import functools
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import click

import ddcodec
from ddcodec import FitConfig, QuantConfig, restore
from ddcodec.decoding import read_file
from ddcodec.errors import ConfigError, DDCError, out_of_memory
from ddcodec.fit import COMPILE_PRESETS, OPTIMIZERS
from ddcodec.images import MAX_INPUT_PIXELS, check_outputs, decoded_name, png_bytes, read_image, write_atomic

from .interrupt import latched_sigint, raise_if_interrupted
from .paths import named_path
from .progress import FitProgress


# click 8.2+ raises this for a group called without a command (older versions print the help
# and exit themselves); an empty tuple catches nothing
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
# Pillow logs what it cannot decode (a TIFF's samples per pixel) before raising; with no logging
# set up, Python prints that as a second line beside ddc's own one-line error
_PIL_QUIET = logging.NullHandler()


class DDCGroup(click.Group):
    def main(self, args=None, prog_name=None, standalone_mode=True, **kw):
        logging.getLogger("PIL").addHandler(_PIL_QUIET)
        # click's own usage errors (a bad option value, a missing argument) end in one line too,
        # like every DDCError, with click's exit code 2
        if not standalone_mode:
            return super().main(args, prog_name, standalone_mode=False, **kw)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **kw)
        except _NO_ARGS_IS_HELP as e:  # bare `ddc` or `ddc bench`: the help itself, not as an error
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            where = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
            click.echo(f"ddc: error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("ddc: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        # Warnings (torch's included) are held back: a run that fails or is interrupted says one
        # line, and a run that succeeds ends with one line per distinct warning. Deprecation
        # notices inside torch are for torch's callers' developers, not for a user of ddc.
        with warnings.catch_warnings(record=True) as held, latched_sigint():
            warnings.simplefilter("default")
            result = self._invoke(ctx)  # an error or Ctrl-C leaves with its one line
            shown = [w for w in held if str(w.message).strip() and not _torch_deprecation(w)]
            for w in dict.fromkeys(str(w.message).strip().splitlines()[0] for w in shown):
                click.echo(f"ddc: warning: {w}", err=True)
            return result

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DDCError as e:
            click.echo(f"ddc: error: {e}", err=True)
            ctx.exit(1)
        except MemoryError:
            click.echo("ddc: error: out of memory (try a smaller -k, --bank or image)", err=True)
            ctx.exit(1)
        except RuntimeError as e:  # torch reports a full device as a RuntimeError
            if not out_of_memory(e):
                raise
            where = "memory" if "can't allocate memory" in str(e) else "GPU memory"
            click.echo(f"ddc: error: out of {where} (try a smaller -k, --bank or image)", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("ddc: interrupted; no partial output was left", err=True)
            ctx.exit(130)


def _torch_deprecation(w) -> bool:
    return issubclass(w.category, (DeprecationWarning, FutureWarning)) and "torch" in Path(w.filename).parts


@click.group(cls=DDCGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(ddcodec.__version__, prog_name="ddc")
def cli():
    """ddcodec: compress images into the weights of a Deep Decoder."""


# The defaults the CLI picks when -k or --iters is not given, as each command's help says them
K_DEFAULTS = {"encode": "64; 128 for --denoise, --mask, --scale and skip; with --bpp, from the target",
              "encode-dir": "64; 128 for skip; with --bpp, from the target",
              "restore": "128"}
ITERS_DEFAULTS = {"encode": f"{FitConfig.iters}; --denoise: from the estimated noise level",
                  "denoise": "from the estimated noise level", "restore": f"{FitConfig.iters}"}


def fit_options(channels=64, layers=6, iters=FitConfig.iters, lr=None, restoring=True, k_default="encode",
                iters_default="encode"):
    """Options every fitting command shares, with one name each across API, CLI and file.
    k_default / iters_default: the K_DEFAULTS / ITERS_DEFAULTS entry the help names when
    channels / iters is None (the command then picks it)."""
    def per_arch(default, what, otherwise):
        return f"{what} [default: {default}]" if default else f"{what} [default: {otherwise}]"

    opts = [
        click.option("-k", "--channels", type=int, default=channels, help=per_arch(channels, "Channels per layer (k).", K_DEFAULTS[k_default])),
        click.option("--layers", type=int, default=layers, help=per_arch(layers, "Blocks (d); d-1 upsamplings (skip: scales).", "6; skip: 5")),
        click.option("--arch", type=click.Choice(["deep-decoder", "skip"]), default="deep-decoder",
                     show_default=True, help="Network: the Deep Decoder, or DIP's skip net (2.2 M parameters) to compare."),
        click.option("--iters", type=click.IntRange(min=1), default=iters, show_default=bool(iters),
                     help="Fitting iterations." + ("" if iters else f" [default: {ITERS_DEFAULTS[iters_default]}]")),
        click.option("--lr", type=float, default=lr, show_default=bool(lr),
                     help="Learning rate (Adam's; Muon's steps are scaled to match)." + ("" if lr else " [default: 0.05 for k <= 21, falling to 0.01 at k = 64"
                                                   + (f"; restoration and skip: {restore.RESTORE_LR}]" if restoring else "; skip: 0.01]"))),
        click.option("--seed", default=0, show_default=True, help="Seed of the weights and input z (0..2^64-1)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes."),
    ]

    def wrap(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return wrap


MARGINS = {"auto": None, "on": True, "off": False}  # --margin -> FitConfig.margin (None: its rule)


def margin_option(f):
    """--margin, handed to the command as FitConfig.margin's value."""
    return click.option("--margin", type=click.Choice(list(MARGINS)), default="auto", show_default=True,
                        callback=lambda ctx, param, value: MARGINS[value],
                        help="Fit the image as the centre of a larger canvas, whose edge the Deep Decoder fits "
                             "poorly (format 5). auto: for Deep Decoder fits at k >= 9; off "
                             "writes files that version-3 readers open.")(f)


def speed_options(f):
    """How the fit runs: its optimiser and canvas, and its GPU speed settings (the CPU always runs plain
    fp32). --compile-preset names a FitConfig.compile preset and is handed to the command as its
    compile_."""
    @functools.wraps(f)  # the options below f keep their place: wraps copies click's list
    def with_preset(*args, compile_preset=None, **kw):
        if compile_preset is not None:
            if kw["compile_"] is False:
                raise ConfigError("--no-compile and --compile-preset contradict each other")
            kw["compile_"] = compile_preset
        return f(*args, **kw)
    g = click.option("--compile-preset", type=click.Choice(COMPILE_PRESETS),
                     help="Compile with these settings: fused (fewer bytes per step on a GPU), "
                          "reduce-overhead or fused-graphs (CUDA graphs, for one image), triton (the full-size "
                          "tail as Triton kernels; CUDA GPU only), triton-graphs (that, as CUDA graphs), "
                          "max-autotune, default.")(with_preset)
    g = click.option("--compile/--no-compile", "compile_", default=None,
                     help="torch.compile the network (fused kernels; the first fit of each shape compiles). "
                          "Default: on for compression fits large enough to pay for it.")(g)
    g = margin_option(g)
    g = click.option("--optimizer", type=click.Choice(["auto", *OPTIMIZERS]), default="auto", show_default=True,
                     help="auto: Muon for the Deep Decoder's compression fits (its k x k convolutions; Adam "
                          "for the rest), Adam for restoration and the skip net.")(g)
    return click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16"]), default="fp32",
                        show_default=True, help="GPU matmul precision of the fit.")(g)


def rate_options(f):
    """How the fitted weights become a file: the quantization budget, or a rate or quality target."""
    opts = [
        click.option("--max-loss", default=QuantConfig.max_loss_db, show_default=True,
                     help="PSNR (dB) quantization may cost before fine-tuning; larger = smaller file."),
        click.option("--qat-iters", default=QuantConfig.qat_iters, show_default=True,
                     help="Quantization-aware fine-tuning steps."),
        click.option("--round-iters", type=click.IntRange(min=0),
                     help="Steps of learned rounding (AdaRound) after the fine-tuning; 0: nearest integers. "
                     "Compression only. [default: a third of --iters]"),
        click.option("--bpp", type=float, help="Rate control: the largest file within this many bits per "
                     "pixel (k from the target unless -k is given; --max-loss is then searched)."),
        click.option("--psnr", type=float, help="Quality control: the smallest file the fit allows at this PSNR (dB)."),
        click.option("--tile", default="auto", show_default=True,
                     help="Code the image as a grid of networks of about WxH pixels (k per tile); auto: "
                     "when k comes from --bpp, sized from the image and the rate, else one network; none: never."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", type=named_path(path_type=str),
              help="Output .ddc [default: IMAGE with .ddc]; a folder when encoding several images, "
                   "or when it ends in /.")
@fit_options(channels=None, layers=None, iters=None)
@speed_options
@rate_options
@click.option("--denoise", is_flag=True, help="Fit with the denoising stopping rule (iterations from the noise level).")
@click.option("--mask", type=named_path(dir_okay=False), help="Inpaint: white = known pixels.")
@click.option("--scale", type=int, default=1, show_default=True, help="Super-resolve: the file decodes at scale x the size.")
@click.option("--bank", type=click.IntRange(min=1), default=8, show_default=True, help="Images fitted at once (several inputs).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_INPUT_PIXELS, show_default=True,
              help="Refuse input images with more pixels than this.")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result line per image.")
def encode(images, output, **opts):
    """Fit a Deep Decoder to each IMAGE and write its quantized weights as a .ddc file.

    IMAGES are files, folders or glob patterns; several are fitted in banks on one device."""
    from .batch import encode_command
    # read as text: a Path drops the trailing slash of "-o out/", which asks for a folder
    folder = output is not None and output.endswith(("/", os.sep))
    encode_command(images, None if output is None else Path(output), folder=folder, **opts)


@cli.command()
@click.argument("file", type=named_path(dir_okay=False))
@click.option("-o", "--output", type=named_path(dir_okay=False),
              help="Output image [default: FILE's name with .decoded.png: photo.ddc -> photo.decoded.png, so the original photo.png is never in the way].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (as encode's -q).")
def decode(file, output, device, force, quiet):
    """Decode a .ddc file to an image (PNG unless -o names another format)."""
    output = output or decoded_name(file)
    img = ddcodec.decode_file(file, output, force, device=device)
    if not quiet:
        click.echo(f"{output}: {img.shape[1]}x{img.shape[0]}")


@cli.command()
@click.argument("file", type=named_path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(file, as_json):
    """Show the header of a .ddc file."""
    data = read_file(file)  # its errors name the file already
    try:
        d = ddcodec.info(data)
    except ddcodec.errors.FormatError as e:  # name the file, as decode does
        raise type(e)(f"{file}: {e}") from None
    if as_json:
        click.echo(json.dumps(d))
        return
    for k, v in d.items():
        click.echo(f"{k:>14}: {v}")


@cli.command()
@click.option("-o", "--output", type=named_path(file_okay=False),
              help="Folder for the results [default: a new temporary folder].")
@click.option("--iters", type=click.IntRange(min=1), default=2000, show_default=True, help="Fitting iterations.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--force", is_flag=True, help="Replace the results of an earlier demo in -o.")
def demo(output, iters, device, force):
    """Encode and decode the bundled 192x128 sample image (k=16), and report the figures."""
    import tempfile
    from importlib.resources import files

    from .batch import output_folder

    ddcodec.codec.resolve_device(device)  # a bad --device fails before any folder is made
    out = output or Path(tempfile.mkdtemp(prefix="ddc-demo-"))
    with output_folder(out, made=[] if output else [out]):  # removed again if nothing was written
        check_outputs([out / "sample.ddc", out / "sample.decoded.png"], force)
        src = files("ddcodec") / "data" / "kodim23-192x128.png"
        img = read_image(src)
        fit, quant = FitConfig(iters=iters), QuantConfig()
        with FitProgress(fit, quant, False) as bar:
            res = ddcodec.encode(img, 16, 6, fit, quant, device, progress=bar.update)
        raise_if_interrupted()  # a Ctrl-C torch swallowed after the last report: nothing written
        write_atomic(out / "sample.ddc", res.data, force)
        t0 = time.perf_counter()
        dec = ddcodec.decode(res.data)
        write_atomic(out / "sample.decoded.png", png_bytes(dec), force)
    from ddcodec.metrics import psnr
    click.echo(f"sample 192x128, k=16: {res.bytes} bytes = {res.bpp:.3f} bpp, "
               f"PSNR {res.psnr:.2f} dB (decoded: {psnr(dec, img):.2f} dB), encode {res.seconds:.1f} s, "
               f"decode {time.perf_counter() - t0:.2f} s on {res.device}")
    click.echo(f"files in {out}")


@cli.group()
def bench():
    """Benchmarks (run from a source checkout: they live in benchmarks/)."""


def _bench_module(name):
    import importlib
    import os
    if os.path.isdir("benchmarks") and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script does not put the checkout on the path
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ImportError as e:
        raise ConfigError(f"the benchmarks need a source checkout and the bench extra "
                          f"(pip install -e '.[bench]'): {e}") from None


for _name, _doc in (("rd", "Rate-distortion against JPEG, WebP, JPEG 2000 and AVIF."),
                    ("restore", "Restoration against untrained baselines."),
                    ("speed", "Fitting speed and the floor.")):
    @bench.command(_name, help=_doc, context_settings={"ignore_unknown_options": True,
                                                      "help_option_names": []})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _run(args, _name=_name):
        module = _bench_module(_name)
        sys.argv[0] = f"ddc bench {_name}"  # argparse names the program in its usage lines after argv[0]
        module.main(list(args))


from .restore_cmds import register  # noqa: E402
from .scale_cmds import register as register_scale  # noqa: E402

register(cli, fit_options, margin_option)
register_scale(cli, fit_options, speed_options, rate_options)


def main():
    cli(prog_name="ddc")


if __name__ == "__main__":
    sys.exit(main())
