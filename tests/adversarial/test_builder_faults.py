"""Faults around a build: files vanishing, truncated or replaced between plan and load, an
unwritable output, a full disk while writing the release files, a leftover temporary of a killed
build. Each ends in a rejects row (the rest is built) or a one-line error with the documented
exit code, and nothing half-written under a final name."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from softmask_builder.dataset import release
from softmask_builder.dataset.build import plan_build, run_build
from softmask_builder.exitcodes import EXIT_EMPTY, EXIT_INPUT, EXIT_IO
from softmask_builder.dataset.release import verify
from tests.adversarial.kit import (assert_one_line_error, build, dl_recipe, dl_rows, final_files, invoke, key_png,
                                   rejects_of)


def _vanish(png):
    png.unlink()


def _truncate(png):
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])


def _empty(png):
    png.write_bytes(b"")


def _directory(png):
    png.unlink()
    png.mkdir()


def _broken_link(png):
    png.unlink()
    os.symlink(png.parent / "nowhere.png", png)


FAULTS = {"vanished": (_vanish, "image missing"), "truncated": (_truncate, "cannot decode"),
          "empty": (_empty, "cannot decode"), "directory": (_directory, "image missing"),
          "broken_link": (_broken_link, "image missing")}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_key_slice_changed_between_plan_and_load(fault, dl_source, tmp_path):
    plan = plan_build(dl_recipe(), dl_source)
    row = dl_rows(dl_source)[0]
    damage, reason = FAULTS[fault]
    damage(key_png(dl_source, row))
    out = tmp_path / "out"
    result = run_build(plan, out)
    rej = rejects_of(out)[row["File_name"][:-4]]
    assert rej["stage"] == "load" and reason in rej["reason"] and str(tmp_path) not in rej["reason"]
    assert result.n_samples == 2 and verify(out).ok


def test_out_is_a_file(dl_source, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    result = invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--out", out)
    assert_one_line_error(result, EXIT_IO, str(out))


def test_permission_denied_on_rename_is_exit_5(dl_source, tmp_path, monkeypatch):
    from softmask_builder.formats import shards

    real = os.replace

    def deny(src, dst):
        if str(dst).endswith(".h5"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(shards.os, "replace", deny)
    out = tmp_path / "out"
    result = invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--out", out)
    line = assert_one_line_error(result, EXIT_IO, "Permission denied", str(out))
    assert line.startswith("Error: I/O error on ")
    assert not [n for n in final_files(out) if n.endswith(".h5")]


def test_disk_full_while_writing_release_files(dl_source, tmp_path, monkeypatch):
    real = release.atomic.write_text

    def full(path, text, **kwargs):
        if path.name == release.MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device", str(path.with_name(".tmp")))
        return real(path, text, **kwargs)

    monkeypatch.setattr(release.atomic, "write_text", full)
    out = tmp_path / "out"
    result = invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--out", out)
    assert_one_line_error(result, EXIT_IO, "disk full", str(out))
    assert "manifest.json" not in final_files(out) and "SHA256SUMS" not in final_files(out)
    assert not verify(out).ok  # an unfinished build never looks finished
    monkeypatch.setattr(release.atomic, "write_text", real)
    assert invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--out", out).exit_code == 0
    assert verify(out).ok


def test_leftover_temporary_of_a_killed_build_is_removed(dl_source, tmp_path):
    out = tmp_path / "out"
    build(dl_recipe(), dl_source, out)
    (shard,) = sorted(out.glob("*.h5"))
    leftover = out / f".{shard.name}.99999.tmp"
    leftover.write_bytes(b"half a shard")
    build(dl_recipe(), dl_source, out)
    assert not leftover.exists() and verify(out).ok


@pytest.mark.parametrize("damage, needle", [
    (lambda root: (root / "DL_info.csv").unlink(), "DL_info.csv not found"),
    (lambda root: (root / "DL_info.csv").write_bytes(b""), "cannot read"),
    (lambda root: ((root / "DL_info.csv").unlink(), (root / "DL_info.csv").mkdir()), "DL_info.csv not found"),
    (lambda root: (root / "DL_info.csv").write_text("a,b\n1,2\n"), "lacks column(s)"),
])
def test_broken_dl_info_is_one_line(damage, needle, dl_source):
    damage(dl_source)
    result = invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--dry-run")
    assert_one_line_error(result, EXIT_INPUT, needle)


def test_no_images_at_all_is_exit_4_with_every_row_rejected(dl_source, tmp_path):
    shutil.rmtree(dl_source / "Images_png")
    out = tmp_path / "out"
    result = invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--out", out)
    assert_one_line_error(result, EXIT_EMPTY, "no sample was built")
    assert json.loads(result.stdout)["n_rejects"] == len(dl_rows(dl_source))
    assert all(r["reason"].startswith("image missing: Images_png/") for r in rejects_of(out).values())
