"""Tests of the DeepLesion-layout writer and the truth file.

Independent references: a re-read of the written PNGs with OpenCV, the CSV parsed back with the
standard library and the RECIST parser, and the real DL_info.csv fixture.
"""

from __future__ import annotations

import csv
import re

import cv2
import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.labelling.recist import Recist
from softmask_builder.phantom.deeplesion_writer import (read_truth, write_deeplesion, write_replicated_sample,
                                                        write_sample)
from softmask_builder.sources.deeplesion import DL_INFO_COLUMNS


@pytest.fixture(scope="module")
def written(tmp_path_factory, small_cases):
    root = tmp_path_factory.mktemp("dl")
    truth = write_deeplesion(root, small_cases)
    return root, truth


def test_png_round_trip(written, small_cases):
    root, _ = written
    for c in small_cases:
        folder = root / "Images_png" / c.series_dir
        for off, img in [(0, c.image_hu)] + list(zip(c.neighbor_offsets, c.neighbor_hu)):
            raw = cv2.imread(str(folder / f"{c.key_slice_index + off:03d}.png"), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint16 and raw.shape == img.shape
            np.testing.assert_array_equal(raw.astype(np.int32) - 32768, img.astype(np.int32))


def test_csv_rows_parse_back_to_the_cases(written, small_cases):
    root, _ = written
    with open(root / "DL_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {c.file_name: c for c in small_cases}
    assert [r["File_name"] for r in rows] == sorted(by_name)
    for r in rows:
        c = by_name[r["File_name"]]
        rec = Recist.from_deeplesion(r["Measurement_coordinates"])  # x = column, y = row
        np.testing.assert_allclose(rec.as_array(), c.recist.as_array(), atol=1e-3)
        long_px, short_px = (float(v) for v in r["Lesion_diameters_Pixel_"].split(","))
        assert long_px == pytest.approx(c.recist.long_px, rel=1e-5)
        assert short_px == pytest.approx(c.recist.short_px, rel=1e-5)
        pts = c.recist.as_array()
        x0, y0, x1, y1 = (float(v) for v in r["Bounding_boxes"].split(","))
        assert (x0, y0) == pytest.approx((pts[:, 1].min() - 5, pts[:, 0].min() - 5), abs=1e-3)
        assert (x1, y1) == pytest.approx((pts[:, 1].max() + 5, pts[:, 0].max() + 5), abs=1e-3)
        sx, sy, sz = (float(v) for v in r["Spacing_mm_px_"].split(","))
        assert (sy, sx, sz) == (c.spacing_mm[0], c.spacing_mm[1], c.slice_thickness_mm)
        lo, hi = (int(v) for v in r["Slice_range"].split(","))
        assert (lo, hi) == (c.key_slice_index - 1, c.key_slice_index + 1)
        assert int(r["Train_Val_Test"]) == {"train": 1, "val": 2, "test": 3}[c.split]
        assert int(r["Coarse_lesion_type"]) == (-1 if c.split == "train" else 5)


def test_truth_file_matches_cases(written, small_cases):
    _, truth_path = written
    truth = read_truth(truth_path)
    assert set(truth) == {c.file_name for c in small_cases}
    for c in small_cases:
        t = truth[c.file_name]
        np.testing.assert_array_equal(t["true_fraction"], c.true_fraction)
        np.testing.assert_array_equal(t["true_mask"], c.true_mask)
        np.testing.assert_array_equal(t["apparent_fraction"], c.apparent_fraction)
        np.testing.assert_array_equal(t["recist_px"], c.recist.as_array())
        assert (t["kind"], t["diameter_mm"]) == (c.kind, c.diameter_mm)


def _shape_of(line: str) -> str:
    """A CSV line with every number replaced by N (keeps quoting, separators, layout)."""
    return re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", line.rstrip("\n"))


@pytest.mark.realdata
def test_csv_header_and_cell_formats_match_the_real_file(written, deeplesion_root):
    root, _ = written
    real = (deeplesion_root / "DL_info.csv").read_text().splitlines(keepends=True)
    ours = (root / "DL_info.csv").read_text().splitlines(keepends=True)
    assert ours[0] == real[0]
    assert tuple(ours[0].rstrip("\n").split(",")) == DL_INFO_COLUMNS
    real_shapes = {_shape_of(line) for line in real[1:]}
    for line in ours[1:]:
        assert line.endswith("\n") and not line.endswith("\r\n")
        assert _shape_of(line) in real_shapes, line


def test_write_is_byte_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_sample(a, n=3, seed=5, shape=(192, 192), diameter_range_mm=(3.0, 8.0))
    write_sample(b, n=3, seed=5, shape=(192, 192), diameter_range_mm=(3.0, 8.0))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 * 3 + 2
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert not [p for p in a.rglob(".*")]  # no temporary file left behind


def test_write_rejects_two_cases_in_one_series(tmp_path, small_cases):
    with pytest.raises(InputError, match="series"):
        write_deeplesion(tmp_path, [small_cases[0], small_cases[0]])


def test_replicated_sample_copies_key_slices_to_new_patients(tmp_path):
    source = write_replicated_sample(tmp_path, n=5, unique=2, seed=3)
    with open(source / "DL_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp_path / "cases" / "DL_info.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    assert len(cases) == 2 and len(rows) == 5
    assert [r["Patient_index"] for r in rows] == ["1", "2", "3", "4", "5"]
    for i, row in enumerate(rows):
        case = cases[i % 2]
        assert row["Measurement_coordinates"] == case["Measurement_coordinates"]
        new_series, key = row["File_name"].rsplit("_", 1)
        old_series, old_key = case["File_name"].rsplit("_", 1)
        assert key == old_key
        assert ((source / "Images_png" / new_series / key).read_bytes()
                == (tmp_path / "cases" / "Images_png" / old_series / key).read_bytes())
