"""Encoding an image collection: plan banks, skip what is done, encode, write as banks finish.

The plan is a pure function of the inputs, so a serial run and a distributed one (ddcodec.cluster)
fit the same banks and write the same bytes. Work is split into BankJobs that carry paths, not
pixels: a worker reads its own images, and only the small .ddc bytes travel back. The driver
alone writes outputs (atomically, as each bank finishes), so a worker that dies leaves nothing
behind. A re-run never rewrites an output that exists and verifies; a bank that was cut short
is fitted whole again, so the outputs it still lacks get the bytes an uninterrupted run writes.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from PIL import Image

from . import bitstream, tiles
from .checks import integer
from .codec import bank_key, check_arguments, encode_bank
from .decoding import read_file
from .errors import ConfigError, DDCError, ImageError, PartialBankError, bank_out_of_memory
from .fit import FitConfig
from .nets import Architecture
from .images import MAX_INPUT_PIXELS, channels_of_mode, check_output, missing_folders, read_image, write_atomic
from .quant import QuantConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs besides the paths: the same for every bank of a run."""
    channels: Optional[int] = 64  # None: per bank from quant.target_bpp (rate.channels_for_image)
    layers: int = 6
    arch: str = "deep-decoder"
    fit: FitConfig = FitConfig()
    quant: QuantConfig = QuantConfig()
    device: str = "auto"
    max_pixels: int = MAX_INPUT_PIXELS
    tile: object = None  # (width, height) or "auto": each image coded as a grid (ddcodec.tiles)

    def __post_init__(self):  # a bad setting fails once, here, not once per bank
        check_arguments(self.channels, self.layers, self.fit, self.quant, None, self.tile, arch=self.arch)
        integer("max_pixels", self.max_pixels, 1, 2**62)
        Architecture(self.arch)  # its own check of the kind (ConfigError)


@dataclass(frozen=True)
class BankJob:
    index: int  # position in the plan
    sources: tuple  # input paths (str)
    outputs: tuple  # output paths (str), one per source
    settings: Settings = Settings()
    # Outputs the plan has already settled (done before, or broken): fitted with their bank, so a
    # re-run fits the banks an uninterrupted run fits (and writes its bytes), but never written.
    settled: frozenset = frozenset()

    def pending(self, results) -> list:
        """The results to write: those of members the plan has not settled."""
        return [r for r in results if r[1] not in self.settled]


@dataclass
class Outcome:
    """What became of one input: written, skipped (done before), or failed with a reason."""
    source: str
    output: str
    status: str  # "written", "skipped" or "failed"
    error: str = ""
    summary: dict = field(default_factory=dict)


def find_images(folder) -> list:
    """Image files under folder, recursively, in a stable (sorted) order. A link with an image
    name that leads nowhere (dangling, or a loop) is listed too, so that it is reported as
    failed rather than passed over; links to folders are not followed. A folder that cannot be
    listed is an error: Path.rglob skipped it without a word, and its images with it."""
    folder = Path(folder)
    if not os.path.isdir(folder):  # os.path: a name too long is not a folder either, not a crash
        raise ConfigError(f"{folder} is not a folder")

    def unlisted(e: OSError):
        raise ImageError(f"cannot list the folder {e.filename}: {e.strerror}")
    found = []
    for top, _, names in os.walk(folder, onerror=unlisted):
        for name in names:
            p = Path(top) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and (os.path.isfile(p) or not os.path.exists(p)):
                found.append(p)
    return sorted(found)


def output_path(source: Path, root: Path, out_dir: Path) -> Path:
    """out_dir mirrors the folders under root; photo.jpg -> photo.ddc."""
    return out_dir / source.relative_to(root).with_suffix(".ddc")


def probe(path) -> tuple:
    """The bank key of an image from its header alone (no pixels decoded): (size, channels).
    A probe that disagrees with the full read is harmless: workers regroup what they read."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in _SWAPS_AXES:
            w, h = h, w
        channels = channels_of_mode(im.mode)
    return bank_key((h, w) if channels == 1 else (h, w, 3))


def verified(output: Path, source_key: Optional[tuple]) -> bool:
    """An existing output counts as done if it parses (CRC included) and has the source's size."""
    try:
        data = read_file(output)
        if tiles.is_tiled(data):
            width, height, _, _, members = tiles.unpack_members(data, bitstream.MAX_WORK)
            header, _ = bitstream.unpack(members[0])
        else:
            header, _ = bitstream.unpack(data)
            width, height = header.width, header.height
    except (DDCError, OSError):  # unreadable, too large, damaged
        return False
    key = bank_key((height, width) + (() if header.arch.out_channels == 1 else (3,)))
    return source_key is None or key == source_key


def plan(pairs: Iterable, bank: int = 8, force: bool = False, settings: Settings = Settings(), first: int = 0):
    """(source, output) pairs -> (BankJobs, Outcomes already settled: skipped or unreadable).

    Images with one bank key go into banks of up to `bank`, in input order, so the plan (and
    with it every output byte) does not depend on how many workers run it."""
    if bank < 1:
        raise ConfigError(f"--bank must be at least 1, got {bank}")
    groups, settled, seen = {}, [], set()
    for src, out in pairs:
        src, out = Path(src), Path(out)
        if (real := os.path.realpath(out)) in seen:  # the file itself: out/sub may be a link to out
            settled.append(Outcome(str(src), str(out), "failed", f"another input also maps to {out}"))
            continue
        seen.add(real)
        try:
            key = probe(src)
        except Exception as e:  # noqa: BLE001 - any unreadable header is this file's failure
            settled.append(Outcome(str(src), str(out), "failed", f"cannot read image ({e})"))
            continue
        done = os.path.exists(out) and not force  # os.path: False for a name too long, not an error
        if os.path.isdir(out):  # no --force can replace a folder: say so, not "use --force"
            settled.append(Outcome(str(src), str(out), "failed", f"{out} is a folder"))
            done = True
        elif done and verified(out, key):
            settled.append(Outcome(str(src), str(out), "skipped"))
        elif done:
            settled.append(Outcome(str(src), str(out), "failed",
                                   f"{out} exists but is not a valid .ddc of this image (use --force to replace it)"))
        elif (problem := unwritable(out, src, force)) is not None:  # found now, not after the fit
            settled.append(Outcome(str(src), str(out), "failed", problem))
            done = True
        # Settled images stay in the plan: banks are cut from the full input list, so a re-run of
        # a run killed mid-bank fits that bank whole again and writes the bytes it would have.
        groups.setdefault(key, []).append((str(src), str(out), done))
    jobs = []
    for members in groups.values():
        for i in range(0, len(members), bank):
            chunk = members[i:i + bank]
            if all(done for _, _, done in chunk):
                continue  # nothing left to write in this bank
            jobs.append(BankJob(first + len(jobs), tuple(s for s, _, _ in chunk), tuple(o for _, o, _ in chunk),
                                settings, frozenset(o for _, o, done in chunk if done)))
    return jobs, settled


def unwritable(out: Path, src: Path, force: bool = False) -> Optional[str]:
    """Why out could not be written once its bank is fitted (write_results makes its missing
    folders), or None: a file or a link where a folder must be, or what check_output refuses."""
    try:
        missing = missing_folders(out.parent)
    except DDCError as e:  # a folder name too long, a loop of links: the mkdir after the fit would fail
        return str(e)
    folder = missing[-1].parent if missing else out.parent  # the nearest folder that is there
    if not os.path.isdir(folder):
        return f"cannot write {out}: {folder} is not a folder"
    try:
        if folder == out.parent:
            check_output(out, force, inputs=[src])
        elif not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot write {out}: the folder {folder} is not writable"
    except DDCError as e:
        return str(e)
    return None


def run_bank(job: BankJob, progress=None) -> list:
    """Encode one bank: -> [(source, output, data bytes or None, error, summary)]. Runs on a
    worker; never raises for a bad image, it reports it and encodes the rest."""
    settings = job.settings
    results, readable = [], {}
    for src, out in zip(job.sources, job.outputs):
        try:
            img = read_image(src, settings.max_pixels)
            readable.setdefault(bank_key(img.shape), []).append((src, out, img))
        except DDCError as e:
            results.append((src, out, None, str(e), {}))
    for members in readable.values():  # normally one group: the probe predicted the keys
        try:  # channels None: k from the rate target, per bank (or per tile size)
            encoded = encode_bank([img for _, _, img in members], settings.channels, settings.layers,
                                  settings.fit, settings.quant, settings.device, progress, settings.arch,
                                  tile=settings.tile)
            results += [(s, o, r.data, "", r.summary()) for (s, o, _), r in zip(members, encoded)]
        except PartialBankError as e:  # the images that failed, alone
            results += [(s, o, None, err, {}) if err else (s, o, r.data, "", r.summary())
                        for (s, o, _), r, err in zip(members, e.results, e.errors)]
        except DDCError as e:
            results += [(s, o, None, str(e), {}) for s, o, _ in members]
        except (MemoryError, RuntimeError) as e:  # a bank too large for the device: the next banks may fit
            error = bank_out_of_memory(e, len(members))
            if error is None:
                raise
            results += [(s, o, None, error, {}) for s, o, _ in members]
    return job.pending(results)


def write_results(results, force: bool = False) -> list:
    """The driver's half: write each encoded file atomically -> Outcomes."""
    outcomes = []
    for src, out, data, error, summary in results:
        if data is None:
            outcomes.append(Outcome(src, out, "failed", error))
            continue
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, data, force, inputs=[src])
            outcomes.append(Outcome(src, out, "written", summary=summary))
        except (DDCError, OSError) as e:
            outcomes.append(Outcome(src, out, "failed", str(e)))
    return outcomes


def encode_collection(pairs, settings: Settings = Settings(), bank: int = 8, force: bool = False,
                      runner: Optional[Callable] = None, on_outcomes: Optional[Callable] = None) -> list:
    """Encode (source, output) pairs in banks -> Outcomes, one per input.

    runner(jobs) yields (job, results) as banks finish, in any order: serial_runner by default,
    ddcodec.cluster.ray_runner to spread banks over a Ray cluster. on_outcomes is called with
    each bank's outcomes once they are on disk (progress, logs)."""
    return encode_many([(pairs, settings)], bank, force, runner, on_outcomes)


def encode_many(tasks, bank: int = 8, force: bool = False, runner: Optional[Callable] = None,
                on_outcomes: Optional[Callable] = None) -> list:
    """Like encode_collection for several (pairs, Settings) tasks at once (e.g. the rate points
    of a benchmark): one runner, so a cluster works on all of them together."""
    jobs, outcomes = [], []
    for pairs, settings in tasks:
        j, o = plan(pairs, bank, force, settings, first=len(jobs))
        jobs += j
        outcomes += o
    if on_outcomes and outcomes:
        on_outcomes(outcomes)
    for _, results in (runner or serial_runner)(jobs):
        done = write_results(results, force)
        outcomes += done
        if on_outcomes:
            on_outcomes(done)
    return outcomes


def serial_runner(jobs):
    for job in jobs:
        yield job, run_bank(job)


def folder_pairs(folder, out_dir) -> list:
    """(source, output) pairs for every image under folder, mirrored into out_dir."""
    root = Path(folder)
    return [(p, output_path(p, root, Path(out_dir))) for p in find_images(root)]
