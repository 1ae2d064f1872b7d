"""core.atomic: a file appears whole under its final name, or not at all."""

from __future__ import annotations

import os

import pytest

from softmask_builder.core import atomic


def test_write_bytes_and_text(tmp_path):
    p = atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic.write_text(tmp_path / "a.txt", "x\ny\n")
    assert (tmp_path / "a.txt").read_bytes() == b"x\ny\n"  # no newline translation
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.bin", "a.txt"]


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    final = tmp_path / "f.json"
    final.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic.replacing(final) as tmp:
            tmp.write_text("half")
            1 / 0
    assert final.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_a_folder_replaces_a_missing_path(tmp_path):
    with atomic.replacing(tmp_path / "export") as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (tmp_path / "export" / "x").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic.replacing(tmp_path / "other") as tmp:
            tmp.mkdir()
            (tmp / "y").write_text("2")
            raise RuntimeError
    assert sorted(q.name for q in tmp_path.iterdir()) == ["export"]


def test_temp_names_are_hidden_siblings_and_recognised(tmp_path):
    t = atomic.temp_path(tmp_path / "lnsm-train-00000-of-00001.h5")
    assert t.parent == tmp_path and t.name == f".lnsm-train-00000-of-00001.h5.{os.getpid()}.tmp"
    k = atomic.temp_path(tmp_path / "fig.png", keep_suffix=True)
    assert k.suffix == ".png"
    assert atomic.is_temp_name(t.name) and atomic.is_temp_name(k.name)
    for name in ("lnsm-train-00000-of-00001.h5", "manifest.json", ".plan.json", ".lock", "x.tmp", ".x.tmp"):
        assert not atomic.is_temp_name(name)


def test_the_temporary_is_written_in_place_not_elsewhere(tmp_path):
    with atomic.replacing(tmp_path / "f") as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_text("1")
    assert (tmp_path / "f").read_text() == "1"
