"""`ddc denoise`, `ddc inpaint`, `ddc superres`: restoration as a fit (DIP), each writing the
restored image and, with --ddc, the .ddc file that decodes to it."""

import click

from ddcodec import restore
from ddcodec.fit import FitConfig
from ddcodec.quant import QuantConfig
from ddcodec.images import (beside, check_ddc_name, check_image_name, check_outputs, image_bytes, read_image,
                            write_atomic)

from .paths import named_path
from .interrupt import raise_if_interrupted
from .progress import FitProgress


def output_options(f):
    f = click.option("--force", is_flag=True, help="Replace existing outputs.")(f)
    f = click.option("--ddc", type=named_path(dir_okay=False),
                     help="Also write the fitted network as a .ddc file.")(f)
    return click.option("-o", "--output", type=named_path(dir_okay=False),
                        help="Restored image [default: IMAGE.denoised.png, IMAGE.inpainted.png or IMAGE.superres.png, by the command].")(f)


def run(task, image, output, ddc, force, quiet, fn, mask_path=None, **kw):
    output = output or beside(image, f"{image.stem}.{task}.png")
    # every output checked before the fit: a name, a folder, no clash with an input or each other
    check_image_name(output)
    if ddc is not None:
        check_ddc_name(ddc)
    check_outputs([o for o in (output, ddc) if o is not None], force,
                  inputs=[p for p in (image, mask_path) if p is not None])
    img = read_image(image)
    scale = kw.get("scale", 1)  # the writer itself, for the image's channels and size
    check_image_name(output, 1 if img.ndim == 2 else 3, (img.shape[1] * scale, img.shape[0] * scale))
    iters = kw.get("iters") or FitConfig.iters  # None (the rule) only for the bar's first length
    after = QuantConfig(qat_iters=restore.DISTILL_ITERS if task == "denoise" else 0, round_iters=0)  # distillation
    with FitProgress(FitConfig(iters=iters), after, quiet, may_stop=task == "denoised") as bar:
        r = fn(img, progress=bar.update, **kw)
    raise_if_interrupted()
    write_atomic(output, image_bytes(r.image, output), force, inputs=[image])
    if ddc is not None:
        write_atomic(ddc, r.result.data, force, inputs=[image])
    note = f", estimated noise sigma {r.sigma:.1f}" if r.sigma is not None else ""
    click.echo(f"{output}: {r.image.shape[1]}x{r.image.shape[0]}, {r.iters} iterations{note}, "
               f"{r.result.seconds:.1f} s on {r.result.device}")


def register(cli, fit_options, margin_option):
    @cli.command()
    @click.argument("image", type=named_path(dir_okay=False))
    @output_options
    @margin_option
    @fit_options(channels=None, layers=None, iters=None, lr=restore.RESTORE_LR, k_default="restore", iters_default="denoise")
    def denoise(image, output, ddc, force, quiet, **kw):
        """Denoise IMAGE: fit and stop early, once the averaged output is as far from IMAGE as the
        estimated noise (the skip net, and the Deep Decoder with its margin), within a budget of
        iterations from the estimated noise level."""
        run("denoised", image, output, ddc, force, quiet, restore.denoise, **kw)

    @cli.command()
    @click.argument("image", type=named_path(dir_okay=False))
    @click.option("--mask", type=named_path(dir_okay=False), required=True,
                  help="Mask image of the same size: white (>= 128) = known, black = fill in.")
    @click.option("--network-only", is_flag=True,
                  help="Write the network's whole output (what --ddc decodes to) instead of "
                       "keeping the known pixels.")
    @output_options
    @margin_option
    @fit_options(channels=None, layers=None, iters=None, lr=restore.RESTORE_LR, k_default="restore", iters_default="restore")
    def inpaint(image, mask, network_only, output, ddc, force, quiet, **kw):
        """Fill in the pixels of IMAGE that the mask marks black; known pixels are kept."""
        run("inpainted", image, output, ddc, force, quiet, restore.inpaint, mask_path=mask, mask=read_image(mask),
            keep_known=not network_only, **kw)

    @cli.command()
    @click.argument("image", type=named_path(dir_okay=False))
    @click.option("--scale", type=int, default=4, show_default=True, help="Upscaling factor.")
    @output_options
    @margin_option
    @fit_options(channels=None, layers=None, iters=None, lr=restore.RESTORE_LR, k_default="restore", iters_default="restore")
    def superres(image, scale, output, ddc, force, quiet, **kw):
        """Super-resolve IMAGE by --scale."""
        run("superres", image, output, ddc, force, quiet, restore.superres, scale=scale, **kw)
