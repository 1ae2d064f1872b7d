"""DeepLesion read in place from its official ``Images_png_NN.zip`` files: the same shards
byte-for-byte as from extracted folders, the member index cached outside the source and keyed
by each zip's size and mtime, and rejects that name ``Images_png_NN.zip:Images_png/...``."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import joblib
import pytest

from softmask_builder.dataset.build import plan_build, run_build
from softmask_builder.errors import SourceError
from softmask_builder.formats.recipes import recipe_from_dict
from softmask_builder.sources import dlzip
from softmask_builder.sources.deeplesion import plan_deeplesion


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTMASK_CACHE_DIR", str(tmp_path / "cache"))


def _members(images_root: Path) -> list[str]:
    return sorted(p.relative_to(images_root).as_posix() for p in (images_root / "Images_png").rglob("*.png"))


def zip_source(extracted: Path, dest: Path, groups: list[list[str]], *, keep_extracted=()) -> Path:
    """``dest`` with extracted's DL_info.csv (and a phantom's truth file) and one ``Images_png_NN.zip`` per member group
    (compressed, as NIH ships them); members of ``keep_extracted`` also stay as files."""
    dest.mkdir(parents=True)
    shutil.copyfile(extracted / "DL_info.csv", dest / "DL_info.csv")
    if (extracted / "phantom_truth.npz").is_file():  # a phantom's truth travels with its source
        shutil.copyfile(extracted / "phantom_truth.npz", dest / "phantom_truth.npz")
    for n, group in enumerate(groups, start=1):
        with zipfile.ZipFile(dest / f"Images_png_{n:02d}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for member in group:
                zf.write(extracted / member, member)
    for member in keep_extracted:
        (dest / member).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extracted / member, dest / member)
    return dest


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.h5"))}


def _recipe():
    return recipe_from_dict({"dataset": "dz", "source": "deeplesion", "samples_per_shard": 3,
                             "source_options": {"exclude_noisy": False}, "split": {"method": "official"}})


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from softmask_builder.phantom.deeplesion_writer import write_sample

    root = tmp_path_factory.mktemp("dzph")
    write_sample(root, n=6, seed=2, n_neighbors=1)
    return root


@pytest.mark.realdata
def test_real_fixture_from_zips_gives_the_extracted_shards(deeplesion_root, tmp_path):
    members = _members(deeplesion_root)
    # Two zips; series 000001_02_01 spans both (its slices are split between them).
    first = [m for m in members if m < "Images_png/000001_02_01/016.png"]
    second = [m for m in members if m not in first]
    assert any("000001_02_01" in m for m in first) and any("000001_02_01" in m for m in second)
    root = zip_source(deeplesion_root, tmp_path / "dz", [first, second])
    rec = _recipe()
    ref = run_build(plan_build(rec, deeplesion_root), tmp_path / "extracted")
    with joblib.parallel_config(backend="loky", n_jobs=2):
        got = run_build(plan_build(rec, root), tmp_path / "zipped")
    assert ref.n_samples == got.n_samples == 9
    assert _shards(tmp_path / "extracted") == _shards(tmp_path / "zipped")
    # Rows whose slice is in none of the zips are rejected with the member's relative name.
    missing = [r for r in got.rejects if "image missing" in r.reason]
    assert len(missing) == len([r for r in ref.rejects if "image missing" in r.reason]) > 100
    assert all(r.reason.startswith("image missing (in none of the zips present): Images_png/") for r in missing)
    assert not any(str(tmp_path) in r.reason for r in got.rejects)


def test_mixed_extracted_and_zipped_slices_build_like_extracted(phantom, tmp_path):
    members = _members(phantom)
    keys = [m for m in members]
    half = len(keys) // 2
    root = zip_source(phantom, tmp_path / "mixed", [keys[:half]], keep_extracted=keys[half:])
    refs, _ = plan_deeplesion(root, exclude_noisy=False)
    assert {"image_zip" in r.payload for r in refs} == {True, False}  # both kinds are used
    rec = _recipe()
    run_build(plan_build(rec, phantom), tmp_path / "a")
    run_build(plan_build(rec, root), tmp_path / "b")
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b") != {}


def test_corrupt_member_is_a_rejects_row_naming_zip_and_member(phantom, tmp_path):
    members = _members(phantom)
    refs, _ = plan_deeplesion(phantom, exclude_noisy=False)
    victim = Path(refs[0].payload["image_path"]).relative_to(phantom).as_posix()
    root = tmp_path / "bad"
    root.mkdir()
    shutil.copyfile(phantom / "DL_info.csv", root / "DL_info.csv")
    with zipfile.ZipFile(root / "Images_png_01.zip", "w", zipfile.ZIP_STORED) as zf:
        for m in members:
            zf.write(phantom / m, m)
    # Flip one byte inside the victim's stored data: its CRC-32 no longer matches.
    with zipfile.ZipFile(root / "Images_png_01.zip") as zf:
        info = zf.getinfo(victim)
    raw = bytearray((root / "Images_png_01.zip").read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + 100] ^= 0xFF
    (root / "Images_png_01.zip").write_bytes(bytes(raw))
    result = run_build(plan_build(_recipe(), root), tmp_path / "out")
    bad = [r for r in result.rejects if r.sample_id == refs[0].sample_id]
    assert len(bad) == 1 and bad[0].stage == "load"
    assert bad[0].reason.startswith(f"cannot read Images_png_01.zip:{victim}")
    assert result.n_samples == len(refs) - 1  # the rest goes on


def test_member_index_is_cached_outside_the_source_and_keyed_by_size_and_mtime(phantom, tmp_path, monkeypatch):
    members = _members(phantom)
    root = zip_source(phantom, tmp_path / "src", [members[:3], members[3:]])
    os.chmod(root, 0o555)  # the source may be read-only: nothing is written there
    try:
        index = dlzip.zip_member_index(root)
        assert len(index) == len(members) and index.find(members[4]) == "Images_png_02.zip"
        assert sorted(os.listdir(root)) == ["DL_info.csv", "Images_png_01.zip", "Images_png_02.zip", "phantom_truth.npz"]
        cached = sorted((tmp_path / "cache" / "deeplesion-zips").glob("*.json"))
        assert len(cached) == 2
        # A second index reads the cache: listing a zip is not needed any more.
        opened = []
        real = zipfile.ZipFile

        def spy(*a, **k):
            opened.append(a[0])
            return real(*a, **k)

        monkeypatch.setattr(dlzip.zipfile, "ZipFile", spy)
        assert dlzip.zip_member_index(root).find(members[0]) == "Images_png_01.zip"
        assert opened == []
        # A zip whose mtime changed is listed again (and only that one).
        st = (root / "Images_png_02.zip").stat()
        os.utime(root / "Images_png_02.zip", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        dlzip.zip_member_index(root)
        assert [Path(p).name for p in opened] == ["Images_png_02.zip"]
    finally:
        os.chmod(root, 0o755)


def test_unreadable_zip_is_a_one_line_source_error(phantom, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copyfile(phantom / "DL_info.csv", root / "DL_info.csv")
    (root / "Images_png_07.zip").write_bytes(b"not a zip at all")
    with pytest.raises(SourceError, match="Images_png_07.zip"):
        plan_deeplesion(root, exclude_noisy=False)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTMASK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dlzip.softmask_cache_dir() == tmp_path / "xdg" / "softmask"
    monkeypatch.setenv("SOFTMASK_CACHE_DIR", str(tmp_path / "mine"))
    assert dlzip.softmask_cache_dir() == tmp_path / "mine"


def test_full_slices_from_zips_give_the_extracted_slice_shards(phantom, tmp_path):
    members = _members(phantom)
    root = zip_source(phantom, tmp_path / "sl", [members[: len(members) // 3], members[len(members) // 3:]],
                      keep_extracted=members[:2])
    rec = recipe_from_dict({"dataset": "sl", "source": "deeplesion_slices",
                            "samples_per_shard": 5, "split": {"method": "patient", "seed": 0,
                                                              "fractions": {"train": 0.5, "test": 0.5}}})
    a = run_build(plan_build(rec, phantom), tmp_path / "a")
    b = run_build(plan_build(rec, root), tmp_path / "b")
    assert a.n_samples == b.n_samples == len(members)
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b")
