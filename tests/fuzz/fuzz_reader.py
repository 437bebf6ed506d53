"""Mutation fuzzer for the .ddc reader (ddcodec.decode).

    python -m tests.fuzz.fuzz_reader --n 1000000 --out benchmarks/results/fuzz.json

Seeds come from real files in tests/fuzz/corpus. Each input is a corpus file with a few random
mutations (bit flips, byte writes, inserts, deletes, truncation, chunk duplication, splices).
Half of the time the CRC is then recomputed, so the input passes the checksum and reaches the
header checks, the entropy decoder and the network: that is where a reader's bugs hide.
Every input must end in a value or a ddcodec.errors.DDCError: anything else (a Python
exception, a constriction panic), an input over 1 s, or a process over 1 GB RSS is a finding.
"""
import argparse
import json
import random
import resource
import signal
import struct
import time
import zlib
from pathlib import Path

import ddcodec
from ddcodec.errors import DDCError

CORPUS = Path(__file__).parent / "corpus"
HANG_SECONDS = 1.0  # the long run's bar: an input slower than this is a finding
MAX_WORK = 1 << 20  # the harness decodes headers up to k*pixels = 1M: enough to exercise, bounded RAM
MAX_MACS = 1 << 28  # and up to 268 M multiply-adds (a tiled file's together): bounded time


def corpus() -> list:
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.ddc"))]


def mutate(data: bytes, rng: random.Random, seeds: list) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos % len(b)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del b[pos:pos + rng.randint(1, 16)]
        elif op == 4:
            del b[pos:]
        elif op == 5 and b:
            start = rng.randrange(len(b))
            b[pos:pos] = b[start:start + rng.randint(1, 32)]
        else:
            other = rng.choice(seeds)
            b[pos:] = other[rng.randrange(len(other)):]
    if rng.random() < 0.5 and len(b) >= 4:  # valid CRC: get past the checksum
        b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])))
    return bytes(b)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run(n: int, seed: int = 0, findings_dir: Path = None, slow_seconds=HANG_SECONDS) -> dict:
    """slow_seconds: an input that takes longer is a finding, and one that takes 10x as long is
    stopped as a hang; None: only a hang guard of a minute (the tests, which must not depend on
    how fast the machine is)."""
    rng = random.Random(seed)
    seeds = corpus()
    stats = {"inputs": 0, "decoded": 0, "typed_errors": {}, "findings": [], "max_seconds": 0.0}
    signal.signal(signal.SIGALRM, _alarm)
    t_start = time.perf_counter()
    for i in range(n):
        data = mutate(rng.choice(seeds), rng, seeds)
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, 60 if slow_seconds is None else 10 * slow_seconds)
        try:
            ddcodec.decode(data, max_work=MAX_WORK, max_macs=MAX_MACS)
            stats["decoded"] += 1
        except DDCError as e:
            name = type(e).__name__
            stats["typed_errors"][name] = stats["typed_errors"].get(name, 0) + 1
        except (Exception, _Hang) as e:  # noqa: BLE001 - anything untyped is a finding
            _finding(stats, data, f"{type(e).__name__}: {e}", findings_dir)
        except BaseException as e:  # constriction panics are BaseException
            if isinstance(e, KeyboardInterrupt):
                raise
            _finding(stats, data, f"{type(e).__name__}: {e}", findings_dir)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t0
        stats["max_seconds"] = max(stats["max_seconds"], dt)
        if slow_seconds is not None and dt > slow_seconds:
            _finding(stats, data, f"slow: {dt:.2f} s", findings_dir)
        stats["inputs"] += 1
    stats["seconds"] = round(time.perf_counter() - t_start, 1)
    stats["peak_rss_mb"] = peak_rss_mb()
    return stats


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM is the peak of this program's own
    memory; getrusage's ru_maxrss also keeps what a parent held when it forked this process (a
    test suite's 1 GB read as the fuzzer's own in a CI run), so it is the fallback only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _finding(stats, data: bytes, what: str, findings_dir) -> None:
    stats["findings"].append(what)
    if findings_dir is not None:
        findings_dir.mkdir(parents=True, exist_ok=True)
        (findings_dir / f"finding-{len(stats['findings'])}.ddc").write_bytes(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description="fuzz the .ddc reader")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--no-slow", action="store_true", help="report hangs only, not inputs slower than 1 s")
    a = ap.parse_args(argv)
    stats = run(a.n, a.seed, Path("tests/fuzz/findings"), None if a.no_slow else HANG_SECONDS)
    stats["findings"] = stats["findings"][:50]
    print(json.dumps(stats, indent=1))
    if a.out:
        a.out.write_text(json.dumps(stats, indent=1) + "\n")


if __name__ == "__main__":
    main()
