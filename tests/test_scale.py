"""Encoding a collection: the plan, re-runs that skip what is done, bad files, the CLI, and
the one-line hint when --ray is asked for without Ray (test_scale_ray.py runs Ray itself)."""
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import ddcodec.collection
from ddcodec import FitConfig, QuantConfig
from ddcodec.collection import Settings, encode_collection, folder_pairs, plan
from ddcodec_cli.main import cli

from .conftest import small

SETTINGS = Settings(channels=4, layers=3, fit=FitConfig(iters=40), quant=QuantConfig(qat_iters=5), device="cpu")
CLI_FIT = ["-k", "4", "--layers", "3", "--iters", "40", "--qat-iters", "5", "--bank", "2", "-q"]


def make_folder(root: Path, n: int = 5) -> Path:
    """n small images, one portrait (shares a bank with the landscapes), one in a sub-folder."""
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(n):
        im = Image.fromarray(small(32 + 2 * i, 24, "RGB")[:, i:i + 32] if i else small(32, 24))
        if i == 2:
            im = im.transpose(Image.TRANSPOSE)
        im.save(src / ("sub" if i == n - 1 else "") / f"im{i}.png")
    return src


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.ddc"))}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("serial")
    src = make_folder(root)
    outcomes = encode_collection(folder_pairs(src, root / "out"), SETTINGS, bank=2)
    assert [o.status for o in outcomes] == ["written"] * 5
    return src, tree(root / "out")


def test_plan_groups_by_size_up_to_transposition_and_keeps_input_order(tmp_path):
    src = make_folder(tmp_path)
    Image.fromarray(small(40, 40)).save(src / "square.png")
    jobs, settled = plan(folder_pairs(src, tmp_path / "out"), bank=2)
    assert settled == []
    assert [[Path(s).name for s in j.sources] for j in jobs] == [
        ["im0.png", "im1.png"], ["im2.png", "im3.png"], ["im4.png"], ["square.png"]]


def test_rerun_skips_outputs_that_verify_and_reports_broken_ones(tmp_path, serial):
    src, _ = serial
    out = tmp_path / "out"
    encode_collection(folder_pairs(src, out), SETTINGS, bank=2)
    (out / "im1.ddc").write_bytes((out / "im1.ddc").read_bytes()[:-3])  # truncated: not done
    statuses = {Path(o.source).name: o.status for o in encode_collection(folder_pairs(src, out), SETTINGS, bank=2)}
    assert statuses == {"im0.png": "skipped", "im1.png": "failed", "im2.png": "skipped",
                        "im3.png": "skipped", "im4.png": "skipped"}
    forced = encode_collection(folder_pairs(src, out), SETTINGS, bank=2, force=True)
    assert [o.status for o in forced] == ["written"] * 5


def test_a_bank_cut_short_is_refitted_whole_so_the_rerun_writes_the_serial_bytes(tmp_path, serial):
    src, expected = serial
    out = tmp_path / "out"
    encode_collection(folder_pairs(src, out), SETTINGS, bank=2)
    (out / "im1.ddc").unlink()  # as if killed between the two writes of the first bank
    kept = (out / "im0.ddc").stat().st_mtime_ns
    statuses = {Path(o.source).name: o.status for o in encode_collection(folder_pairs(src, out), SETTINGS, bank=2)}
    assert statuses == {"im0.png": "skipped", "im1.png": "written", "im2.png": "skipped",
                        "im3.png": "skipped", "im4.png": "skipped"}
    assert tree(out) == expected  # im1 fitted beside im0 again, not alone
    assert (out / "im0.ddc").stat().st_mtime_ns == kept


def test_a_bad_file_is_reported_and_the_rest_encoded(tmp_path, serial):
    src = make_folder(tmp_path)
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    outcomes = {Path(o.source).name: o for o in encode_collection(folder_pairs(src, tmp_path / "out"), SETTINGS, bank=2)}
    assert outcomes["broken.png"].status == "failed" and "cannot read" in outcomes["broken.png"].error
    assert tree(tmp_path / "out") == serial[1]


def test_encode_dir_cli_writes_the_serial_files_and_fails_nonzero_on_a_bad_one(tmp_path, serial):
    src = make_folder(tmp_path)
    (src / "bad.png").write_bytes(b"nope")
    r = CliRunner().invoke(cli, ["encode-dir", str(src), "-o", str(tmp_path / "out"), *CLI_FIT])
    assert r.exit_code == 1 and "failed" in r.output and "Traceback" not in r.output
    assert tree(tmp_path / "out") == serial[1]


def test_ray_flag_without_ray_gives_a_one_line_hint(tmp_path, monkeypatch):
    src = make_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = CliRunner().invoke(cli, ["encode-dir", str(src), "-o", str(tmp_path / "out"), "--ray", *CLI_FIT])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["ddc: error: --ray needs Ray: pip install 'ddcodec[ray]'"]


def test_a_rerun_skips_tiled_outputs_that_verify(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(small(64, 48)).save(src / "a.png")
    tiled = Settings(channels=4, layers=3, fit=FitConfig(iters=20), quant=QuantConfig(qat_iters=2), device="cpu",
                     tile=(32, 24))
    first = encode_collection(folder_pairs(src, tmp_path / "out"), tiled)
    assert [o.status for o in first] == ["written"] and (tmp_path / "out" / "a.ddc").read_bytes()[4] == 4
    again = encode_collection(folder_pairs(src, tmp_path / "out"), tiled)
    assert [o.status for o in again] == ["skipped"]
    # and one that does not verify is not: a member's byte flipped (the container's CRC fails)
    data = bytearray((tmp_path / "out" / "a.ddc").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "out" / "a.ddc").write_bytes(bytes(data))
    assert [o.status for o in encode_collection(folder_pairs(src, tmp_path / "out"), tiled)] == ["failed"]
    assert [o.status for o in encode_collection(folder_pairs(src, tmp_path / "out"), tiled, force=True)] == ["written"]


@pytest.mark.parametrize("bad", [dict(channels=0), dict(layers=13), dict(max_pixels=0), dict(arch="unet"),
                                 dict(tile=(4, 4))])
def test_settings_refuse_a_bad_value_when_made_not_once_per_bank(bad):
    from ddcodec.errors import ConfigError
    with pytest.raises(ConfigError):
        Settings(**bad)


def test_encode_dir_with_a_psnr_target_fails_only_the_image_that_misses_it(tmp_path):
    from .test_rate import _easy_and_hard
    (tmp_path / "src").mkdir()
    for name, img in zip(("easy.png", "hard.png"), _easy_and_hard()):
        Image.fromarray(img).save(tmp_path / "src" / name)
    settings = Settings(channels=8, layers=4, fit=FitConfig(iters=150), quant=QuantConfig(qat_iters=5, target_psnr=15),
                        device="cpu")
    outcomes = encode_collection(folder_pairs(tmp_path / "src", tmp_path / "out"), settings, bank=2)
    status = {Path(o.source).name: o.status for o in outcomes}
    assert status == {"easy.png": "written", "hard.png": "failed"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["easy.ddc"]


def _no_fit(*args, **kwargs):
    raise AssertionError("a bank was fitted")


def test_a_folder_that_cannot_be_listed_is_an_error_not_skipped(tmp_path, monkeypatch):
    import os

    from ddcodec.collection import find_images
    from ddcodec.errors import ImageError
    src = make_folder(tmp_path)
    real_walk = os.walk

    def walk(top, onerror=None, **kw):  # as a folder without read permission lists, for root too
        yield from real_walk(top, onerror=onerror, **kw)
        onerror(PermissionError(13, "Permission denied", str(Path(top) / "locked")))
    monkeypatch.setattr(os, "walk", walk)
    with pytest.raises(ImageError, match="cannot list the folder .*locked: Permission denied"):
        find_images(src)


def test_a_link_with_an_image_name_that_leads_nowhere_is_reported_failed(tmp_path, monkeypatch):
    src = make_folder(tmp_path, n=2)
    (src / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (src / "loop.png").symlink_to(src / "loop.png")
    monkeypatch.setattr(ddcodec.collection, "encode_bank", _no_fit)
    jobs, settled = plan(folder_pairs(src, tmp_path / "out"), bank=2)
    assert sorted((Path(o.source).name, o.status) for o in settled) == [("dangling.png", "failed"), ("loop.png", "failed")]


def test_two_outputs_that_are_one_file_through_a_link_are_caught_before_the_fit(tmp_path):
    src = make_folder(tmp_path, n=2)  # in/im0.png and in/sub/im1.png
    Image.fromarray(small(32, 24)).save(src / "sub" / "im0.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(".")  # out/sub/im0.ddc is out/im0.ddc
    jobs, settled = plan(folder_pairs(src, tmp_path / "out"), bank=2, force=True)
    assert [(Path(o.source).relative_to(src).as_posix(), o.status) for o in settled] == [("sub/im0.png", "failed")]
    assert "another input also maps to" in settled[0].error


def test_an_output_folder_name_too_long_is_refused_before_the_fit(tmp_path, monkeypatch):
    src = make_folder(tmp_path, n=2)
    monkeypatch.setattr(ddcodec.collection, "encode_bank", _no_fit)
    outcomes = encode_collection(folder_pairs(src, tmp_path / ("x" * 300)), SETTINGS, bank=2)
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert all("too long" in o.error for o in outcomes)


def test_an_output_that_is_a_folder_is_not_offered_force(tmp_path):
    src = make_folder(tmp_path, n=2)
    (tmp_path / "out" / "im0.ddc").mkdir(parents=True)
    for force in (False, True):
        _, settled = plan(folder_pairs(src, tmp_path / "out"), bank=2, force=force)
        assert [(Path(o.source).name, o.status) for o in settled] == [("im0.png", "failed")]
        assert "is a folder" in settled[0].error and "--force" not in settled[0].error
