"""The Ray runner on a local 2-worker instance (CPU), through the real CLI in subprocesses:
the same bytes as a serial run even when a worker dies mid-bank, and a run killed halfway
finishes on re-run with the serial bytes, nothing lost and nothing rewritten."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddcodec_cli.main import cli

from ddcodec.cluster import ray_runner
from ddcodec.collection import encode_collection, folder_pairs
from ddcodec.errors import ConfigError

from .test_scale import CLI_FIT, SETTINGS, serial, tree  # noqa: F401 - serial is a fixture

# The tests below run a local Ray instance. Ray is in the test extra (pip install '.[test]'), as
# hypothesis is: a missing or broken Ray fails here instead of hiding behind a skip.
import ray  # noqa: E402


def ddc(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "ddcodec_cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def test_ray_run_gives_the_serial_files_byte_for_byte_despite_a_dying_worker(tmp_path, serial):
    src, expected = serial
    marker = tmp_path / "died"
    p = ddc("encode-dir", str(src), "-o", str(tmp_path / "out"), "--ray", "--workers", "2", *CLI_FIT,
            env={"DDCODEC_FAULT_ONCE": str(marker)})
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert marker.exists()  # one worker did die mid-bank, and Ray retried its bank
    assert tree(tmp_path / "out") == expected
    assert "5 encoded, 0 already done, 0 failed" in out


def test_ray_run_killed_after_its_first_file_finishes_on_rerun_with_the_serial_bytes_and_nothing_rewritten(tmp_path, serial):
    src, expected = serial
    out = tmp_path / "out"
    slow = [a if a != "40" else "400" for a in CLI_FIT]  # long enough banks to kill in between
    expected = tree(_serial_with(src, tmp_path / "ref", slow))
    p = ddc("encode-dir", str(src), "-o", str(out), "--ray", "--workers", "1", *slow)
    deadline = time.time() + 240
    while not list(out.rglob("*.ddc")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    p.wait()
    first = {f: (out / f).stat().st_mtime_ns for f in tree(out)}
    # a SIGKILL inside a write may leave that write's temp file (test_robustness): the kill's, not the re-run's
    killed = {f for f in out.rglob("*") if f.name.startswith(".")}
    assert 0 < len(first) < 5, "the kill should land after the first bank and before the last"
    p = ddc("encode-dir", str(src), "-o", str(out), "--ray", "--workers", "1", *slow)
    stdout, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert f"{5 - len(first)} encoded, {len(first)} already done, 0 failed" in stdout
    assert tree(out) == expected
    assert all((out / f).stat().st_mtime_ns == t for f, t in first.items())  # not rewritten
    assert not [f for f in out.rglob("*") if f.name.startswith(".") and f not in killed]  # the re-run left no temp file


def _serial_with(src: Path, out: Path, args) -> Path:
    r = CliRunner().invoke(cli, ["encode-dir", str(src), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.timeout(240)
def test_ray_run_with_more_workers_than_the_cluster_can_place_finishes_with_the_serial_files(tmp_path, serial):
    # one CPU: the second and third actors wait for it until the end; banks sent to them would never run
    src, expected = serial
    runner = ray_runner(workers=3, init_options={"num_cpus": 1})
    outcomes = encode_collection(folder_pairs(src, tmp_path / "out"), SETTINGS, bank=2, runner=runner)
    assert [o.status for o in outcomes] == ["written"] * 5
    assert tree(tmp_path / "out") == expected


@pytest.mark.timeout(120)
def test_ray_worker_larger_than_any_node_is_refused_not_awaited(tmp_path, serial):
    src, _ = serial
    runner = ray_runner(workers=1, cpus_per_worker=4, init_options={"num_cpus": 2})
    with pytest.raises(ConfigError, match="needs 4 CPUs and no Ray node has more than 2"):
        encode_collection(folder_pairs(src, tmp_path / "out"), SETTINGS, bank=2, runner=runner)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ddc"))
