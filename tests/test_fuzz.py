"""A short run of the reader fuzzer (tests/fuzz/fuzz_reader.py); the long run is in the README."""
import json
import subprocess
import sys
from pathlib import Path

from tests.fuzz.fuzz_reader import corpus

ROOT = Path(__file__).resolve().parent.parent


def test_corpus_files_are_valid_ddc_files():
    import ddcodec
    files = corpus()
    assert len(files) >= 3
    for data in files:
        assert ddcodec.decode(data).size > 0


def test_corpus_seeds_every_readable_version_and_the_tiled_containers_member_versions():
    # a format version without a seed is one the fuzzer's mutations seldom reach: a new version
    # (the margin's 5 came after the last long run) must bring its files into the corpus
    from ddcodec import bitstream, tiles
    versions = {data[4] for data in corpus()}
    assert set(bitstream.READABLE) | {bitstream.TILED_VERSION} <= versions
    members = {m[4] for data in corpus() if tiles.is_tiled(data) for m in tiles.unpack_members(data, tiles.MAX_WORK)[4]}
    assert members >= {3, 5}


def test_short_fuzz_run_gives_only_typed_errors_no_hangs_and_bounded_memory(tmp_path):
    # in a process of its own, so that its peak memory is the reader's and not that of the tests
    # that ran before it; no time bar but a hang guard: tests do not depend on the machine's speed
    out = tmp_path / "stats.json"
    subprocess.run([sys.executable, "-m", "tests.fuzz.fuzz_reader", "--n", "3000", "--seed", "12345",
                    "--no-slow", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    stats = json.loads(out.read_text())
    assert stats["inputs"] == 3000
    assert stats["findings"] == []
    assert stats["peak_rss_mb"] < 1024  # measured alone: ~240 MB
    # the mutations must reach every layer of the reader, not just the magic check
    assert {"CorruptError", "TruncatedError", "NotDDCError"} <= set(stats["typed_errors"])
    assert stats["decoded"] > 0


def test_the_fuzzers_peak_memory_is_its_own_not_its_parents(tmp_path):
    # getrusage's ru_maxrss keeps what the parent held at the fork: a CI run's test suite at
    # ~1 GB read as the fuzzer's own and failed the bound above
    import numpy as np

    ballast = np.ones(600 * 2**20 // 8)  # 600 MB resident in this process
    out = tmp_path / "stats.json"
    subprocess.run([sys.executable, "-m", "tests.fuzz.fuzz_reader", "--n", "200", "--seed", "7", "--no-slow",
                    "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    assert ballast.sum() > 0
    assert json.loads(out.read_text())["peak_rss_mb"] < 500  # the reader alone: ~240 MB
