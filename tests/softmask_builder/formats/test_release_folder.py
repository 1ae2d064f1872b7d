"""The release folder's one owner: file names, manifest and SHA256SUMS reading (formats.release_folder)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from softmask_builder.dataset import build as build_mod
from softmask_builder.dataset.build import make_plan, run_build
from softmask_builder.dataset.release import verify
from softmask_builder.formats.release_folder import (LOCK_FILE, MANIFEST, PLAN_FILE, RELEASE_FILES, SUMS, ManifestError,
                                                     manifest_shard_files, parse_sums, read_manifest, sums_text)
from softmask_builder.formats.shards import parse_shard_name
from tests.softmask_builder.dataset.test_build import fake_labeller, fake_loader, make_refs, recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    run_build(make_plan(recipe(), make_refs(12, per_patient=2)), out, loader=fake_loader, labeller=fake_labeller)
    return out


def test_release_files_are_exactly_what_a_build_writes(built):
    """The oracle is the folder itself: every file that is neither a shard nor the build's own hidden
    files is a release file, and every release file is there."""
    written = {p.name for p in built.iterdir() if parse_shard_name(p.name) is None} - {PLAN_FILE, LOCK_FILE}
    assert written == set(RELEASE_FILES)


def test_a_failed_rebuild_leaves_no_release_file_of_the_previous_build(built, tmp_path, monkeypatch):
    """Before any shard is written, every release file goes (croissant.json included: it used to stay)."""
    out = tmp_path / "out"
    shutil.copytree(built, out)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(build_mod, "_build_shards", boom)
    with pytest.raises(RuntimeError):
        run_build(make_plan(recipe(), make_refs(12, per_patient=2)), out, overwrite=True, loader=fake_loader,
                  labeller=fake_labeller)
    assert not [name for name in RELEASE_FILES if (out / name).exists()]
    assert not verify(out).ok


def test_read_manifest_and_its_shard_list(built):
    manifest = read_manifest(built)
    assert manifest == json.loads((built / MANIFEST).read_text())
    files = manifest_shard_files(manifest)
    assert sorted(files) == sorted(p.name for p in built.glob("*.h5"))
    assert manifest_shard_files(manifest, split="test") == [f for f in files if "-test-" in f]


@pytest.mark.parametrize("content, words", [
    (None, "manifest.json is missing in"),
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe\x00", "is not valid JSON"),
    (b"[]", "is not a JSON object (got list)"),
    (b"3", "is not a JSON object (got int)"),
])
def test_a_damaged_manifest_is_one_clear_error(tmp_path, content, words):
    if content is not None:
        (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(ManifestError, match="manifest.json") as info:
        read_manifest(tmp_path)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_verify_reports_a_list_manifest_instead_of_crashing(built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    (out / MANIFEST).write_text("[]")
    report = verify(out)
    assert not report.ok and any("not a JSON object" in p for p in report.problems)


def test_sums_text_is_what_sha256sum_checks(built, tmp_path):
    names = sorted(p.name for p in built.glob("*.h5"))
    hashes = {n: hashlib.sha256((built / n).read_bytes()).hexdigest() for n in names}
    (built / "CHECK").write_text(sums_text(hashes))
    try:
        if shutil.which("sha256sum"):
            subprocess.run(["sha256sum", "-c", "--quiet", "CHECK"], cwd=built, check=True)
        assert parse_sums(sums_text(hashes)) == (hashes, [])
    finally:
        (built / "CHECK").unlink()


def test_parse_sums_names_each_malformed_line():
    good = "a" * 64 + "  x.h5\n"
    entries, bad = parse_sums(good + "nonsense\n" + "A" * 64 + "  y.h5\n")
    assert entries == {"x.h5": "a" * 64}
    assert [b.split(" line ")[1][:1] for b in bad] == ["2", "3"] and all(b.startswith(SUMS) for b in bad)
