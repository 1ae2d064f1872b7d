"""The same source at two mount points builds byte-identical outputs, rejects included: reject
reasons name paths relative to the source root, never a local absolute path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from softmask_builder.sources.relpaths import relative_text
from softmask_builder.formats.shards import open_shard
from tests.adversarial.kit import build, dl_recipe, dl_rows, key_png, masks_recipe, write_dl_rows


def _with_rejects(src: Path) -> None:
    """A plan reject (a row whose PNG is missing) and a load reject (a truncated PNG)."""
    rows = dl_rows(src)
    missing = dict(rows[0])
    missing["File_name"] = missing["File_name"].rsplit("_", 1)[0] + "_999.png"
    write_dl_rows(src, rows + [missing])
    png = key_png(src, rows[1])
    png.write_bytes(png.read_bytes()[:200])


def _released(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def _all_text(out: Path) -> str:
    text = ""
    for p in sorted(out.iterdir()):
        if p.suffix == ".h5":
            with open_shard(p) as s:
                text += repr(s.attrs) + repr(s.meta.tolist())
        elif p.is_file():
            text += p.read_text(encoding="utf-8")
    return text


def test_two_mount_points_give_identical_bytes(phantom3, tmp_path):
    mounts = [tmp_path / "mnt_a" / "src", tmp_path / "elsewhere" / "deeper" / "src"]
    for m in mounts:
        shutil.copytree(phantom3, m)
        _with_rejects(m)
    link = tmp_path / "link"
    os.symlink(mounts[0], link)  # a third spelling of the first copy
    outs = []
    for i, source in enumerate(mounts + [link]):
        out = tmp_path / f"out{i}"
        build(dl_recipe(), source, out)
        outs.append(out)
    first = _released(outs[0])
    assert {"rejects.csv", "manifest.json", "DATASET_CARD.md", "SHA256SUMS"} <= set(first)
    rejects = first["rejects.csv"].decode()
    assert "image missing: Images_png/" in rejects and "cannot decode Images_png/" in rejects
    for out in outs[1:]:
        assert _released(out) == first
    for out, source in zip(outs, mounts + [link]):
        text = _all_text(out)
        assert str(tmp_path) not in text and os.path.realpath(tmp_path) not in text


def test_masks_source_rejects_hold_no_local_path(masks_source, tmp_path):
    (masks_source / "lonely.npy").write_bytes(b"junk")  # image without mask (plan)
    (masks_source / "case2_a.npy").write_bytes(b"junk")  # unreadable image (load)
    out = tmp_path / "out"
    build(masks_recipe(), masks_source, out)
    text = (out / "rejects.csv").read_text()
    assert "lonely" in text and "case2_a" in text and str(tmp_path) not in text


@pytest.mark.parametrize("text, expect", [
    ("image missing: /m/src/Images_png/a/1.png", "image missing: Images_png/a/1.png"),
    ("cannot read /m/src: gone", "cannot read .: gone"),
    ("/m/srcx/a.png stays", "/m/srcx/a.png stays"),  # another folder that merely starts alike
])
def test_relative_text(text, expect):
    assert relative_text(text, "/m/src") == expect
