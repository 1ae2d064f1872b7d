"""Adversarial corpus, round 3 (issue 23): DeepLesion rows that lie about themselves. A
``Patient_index`` that disagrees with its File_name's patient is a plan reject (it could put one
patient in two splits); RECIST axes given in the wrong order are swapped by their measured
lengths; nearly collinear axes are a plan reject."""

from __future__ import annotations

import numpy as np

from softmask_builder.formats.shards import open_shard
from tests.adversarial.kit import build, dl_recipe, dl_rows, rejects_of, write_dl_rows


def _recist_by_id(out):
    found = {}
    for shard in sorted(out.glob("*.h5")):
        with open_shard(shard) as s:
            for i, sid in enumerate(s.sample_ids):
                found[sid] = np.asarray(s.meta_column("recist_px")[i])
    return found


def test_patient_index_disagreeing_with_the_folder_is_a_plan_reject(dl_source, tmp_path):
    rows = dl_rows(dl_source)
    rows[0]["Patient_index"] = rows[1]["Patient_index"]  # claims another patient
    write_dl_rows(dl_source, rows)
    out = tmp_path / "out"
    result = build(dl_recipe(), dl_source, out)
    assert result.n_samples == 2
    (rej,) = rejects_of(out).values()
    assert rej["stage"] == "plan" and "Patient_index" in rej["reason"] and "disagrees" in rej["reason"]
    # fixing the row recovers the sample
    rows[0]["Patient_index"] = str(int(rows[0]["File_name"].split("_")[0]))
    write_dl_rows(dl_source, rows)
    assert build(dl_recipe(), dl_source, tmp_path / "fixed").n_samples == 3


def test_swapped_recist_axes_are_decided_by_measured_length(dl_source, tmp_path):
    reference = _recist_by_id(_built(dl_source, tmp_path / "ref"))
    rows = dl_rows(dl_source)
    v = rows[0]["Measurement_coordinates"].split(",")
    rows[0]["Measurement_coordinates"] = ",".join(v[4:] + v[:4])  # short pair first
    write_dl_rows(dl_source, rows)
    swapped = _recist_by_id(_built(dl_source, tmp_path / "swapped"))
    assert swapped.keys() == reference.keys()
    for sid in reference:  # the same mark as the correctly ordered row: long axis first
        np.testing.assert_array_equal(swapped[sid], reference[sid])


def _built(src, out):
    assert build(dl_recipe(), src, out).n_samples == 3
    return out


def test_nearly_collinear_recist_axes_are_a_plan_reject(dl_source, tmp_path):
    rows = dl_rows(dl_source)
    x1, y1, x2, y2 = (float(t) for t in rows[0]["Measurement_coordinates"].split(",")[:4])
    # a "short" axis along the long one, 1 px off its line: crosses at a few degrees
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    dx, dy = (x2 - x1) / 4, (y2 - y1) / 4
    short = [cx - dx, cy - dy + 0.3, cx + dx, cy + dy - 0.3]
    rows[0]["Measurement_coordinates"] = ", ".join(f"{t:g}" for t in [x1, y1, x2, y2, *short])
    write_dl_rows(dl_source, rows)
    out = tmp_path / "out"
    assert build(dl_recipe(), dl_source, out).n_samples == 2
    (rej,) = rejects_of(out).values()
    assert rej["stage"] == "plan" and "collinear" in rej["reason"]


def test_phantom_backgrounds_skip_a_bad_dl_info_row_and_an_odd_png_name(dl_source, tmp_path):
    from softmask_builder.phantom.backgrounds import load_backgrounds

    reference = {b.background_id for b in load_backgrounds(dl_source)}
    rows = dl_rows(dl_source)
    original = [dict(r) for r in rows]
    rows[0]["Bounding_boxes"] = "garbage"
    write_dl_rows(dl_source, rows)
    series = sorted((dl_source / "Images_png").iterdir())[1]
    (series / "odd_name.png").write_bytes(next(series.glob("*.png")).read_bytes())
    skipped: list = []
    kept = {b.background_id for b in load_backgrounds(dl_source, skipped=skipped)}
    reasons = {s["background_id"]: s["reason"] for s in skipped}
    assert "bad DL_info row" in reasons["deeplesion:DL_info line 2"]
    assert reasons[f"deeplesion:{series.name}/odd_name.png"].startswith("PNG name is not a slice number")
    # the other series still give their backgrounds (the bad row's series has no boxes left)
    bad_series = rows[0]["File_name"].rsplit("_", 1)[0]
    assert kept == {b for b in reference if bad_series not in b}
    # and the command line says so in one stderr line, exit 0 (the DL_info row repaired: the phantom
    # needs one real background per split, and this source has three series)
    from tests.adversarial.kit import invoke

    write_dl_rows(dl_source, original)

    result = invoke("phantom", "--out", tmp_path / "ph", "--n", "1", "--backgrounds", dl_source)
    assert result.exit_code == 0, result.output
    assert "background row(s)/slice(s) skipped" in result.stderr
