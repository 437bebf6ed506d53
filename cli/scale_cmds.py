"""`ddc encode-dir`: encode every image under a folder into a mirrored folder of .ddc files,
serially or spread over a Ray cluster (--ray). A re-run skips outputs that exist and verify."""
import json
import sys

import click
from tqdm import tqdm

from ddcodec import QuantConfig, tiles
from ddcodec.collection import Settings, encode_collection, folder_pairs
from ddcodec.errors import DDCError
from ddcodec.images import MAX_INPUT_PIXELS

from .batch import fit_config
from .paths import named_path


def register(cli, fit_options, speed_options, rate_options):
    @cli.command("encode-dir")
    @click.argument("folder", type=named_path(file_okay=False))
    @click.option("-o", "--output", type=named_path(file_okay=False), required=True,
                  help="Output folder; it mirrors the sub-folders of FOLDER.")
    @fit_options(channels=None, layers=None, restoring=False, k_default="encode-dir")
    @speed_options
    @rate_options
    @click.option("--bank", type=click.IntRange(min=1), default=8, show_default=True, help="Images fitted at once per worker.")
    @click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
                  metavar="[ADDRESS]", help="Run on Ray: alone, a local instance; with an address "
                  "(auto, ray://host:10001), that cluster.")
    @click.option("--workers", type=click.IntRange(min=0), default=0, help="Ray workers [default: one per GPU, else one per CPU].")
    @click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_INPUT_PIXELS, show_default=True,
                  help="Refuse input images with more pixels than this.")
    @click.option("--force", is_flag=True, help="Re-encode and replace existing outputs.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON line per image.")
    def encode_dir(folder, output, channels, layers, arch, iters, lr, seed, device, quiet, precision, optimizer, margin,
                   compile_, max_loss, qat_iters, round_iters, bpp, psnr, tile, bank, ray_address, workers, max_pixels, force, as_json):
        """Encode every image under FOLDER (recursively) into OUTPUT, in banks.

        Files are written as each bank finishes; a re-run skips every output that exists and
        verifies, so an interrupted run picks up where it stopped."""
        pairs = folder_pairs(folder, output)
        if channels is None and (bpp is None or arch != "deep-decoder"):
            channels = 128 if arch == "skip" else 64  # else None: k per bank from --bpp
        layers = layers if layers is not None else (5 if arch == "skip" else 6)
        tile = tiles.tile_for(tile, bpp if channels is None else None, arch == "deep-decoder")
        fit = fit_config(iters, lr, seed, precision, compile_, optimizer, margin)
        settings = Settings(channels, layers, arch, fit,
                            QuantConfig(max_loss_db=max_loss, qat_iters=qat_iters, target_bpp=bpp,
                                        round_iters=round_iters if arch == "deep-decoder" else 0,
                                        target_psnr=psnr), device, max_pixels, tile)
        runner = None
        if ray_address is not None:
            from ddcodec.cluster import ray_runner
            runner = ray_runner(None if ray_address == "local" else ray_address, workers)
        counts = {"written": 0, "skipped": 0, "failed": 0}
        with tqdm(total=len(pairs), unit="img", disable=quiet or as_json or None) as bar:
            def report(outcomes):
                for o in outcomes:
                    counts[o.status] += 1
                    if as_json:
                        click.echo(json.dumps({"input": o.source, "output": o.output,
                                               "status": o.status, "error": o.error, **o.summary}, allow_nan=False))
                    elif o.status == "failed":
                        bar.write(f"ddc: failed {o.source}: {o.error}", file=sys.stderr)
                bar.update(len(outcomes))
            encode_collection(pairs, settings, bank, force, runner, report)
        if not as_json:
            click.echo(f"{output}: {counts['written']} encoded, {counts['skipped']} already done, "
                       f"{counts['failed']} failed")
        if counts["failed"]:
            raise DDCError(f"{counts['failed']} of {len(pairs)} images failed")
