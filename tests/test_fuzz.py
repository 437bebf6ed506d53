"""A short run of the reader fuzzer (tests/fuzz/fuzz_reader.py); the long run is in the README."""
from tests.fuzz.fuzz_reader import corpus, run


def test_corpus_files_are_valid_ddc_files():
    import ddcodec
    files = corpus()
    assert len(files) >= 3
    for data in files:
        assert ddcodec.decode(data).size > 0


def test_short_fuzz_run_gives_only_typed_errors_no_hangs_and_bounded_memory():
    stats = run(3000, seed=12345)
    assert stats["inputs"] == 3000
    assert stats["findings"] == []
    assert stats["max_seconds"] < 1.0
    assert stats["peak_rss_mb"] < 1024
    # the mutations must reach every layer of the reader, not just the magic check
    assert {"CorruptError", "TruncatedError", "NotDDCError"} <= set(stats["typed_errors"])
    assert stats["decoded"] > 0
