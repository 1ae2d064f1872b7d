"""Counting: rows left out by selection filters are listed in unselected.csv with the filter and
counted in the summary and manifest; empty splits and empty shards are warned about in the
summary, on stderr and in the card; a non-UTF-8 DL_info names its line; `preview` says what it
drew and a corrupt chunk is a one-line error."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from softmask_builder.dataset.build import plan_build
from softmask_builder.exitcodes import EXIT_INPUT, EXIT_VERIFY
from softmask_builder.formats.recipes import load_recipe
from softmask_builder.dataset.release import verify
from tests.adversarial.kit import (assert_one_line_error, build, dl_recipe, dl_rows, invoke, key_png, manifest_of,
                                   read_csv_rows, write_dl_rows)


def _recipe_file(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text("dataset: adv\nsource: deeplesion\nsamples_per_shard: 16\n" + text)
    return path


def test_filters_are_listed_in_unselected_csv(dl_source, tmp_path):
    rows = dl_rows(dl_source)
    rows[0]["Coarse_lesion_type"] = "3"      # dropped by lesion_types
    rows[1]["Possibly_noisy"] = "1"          # dropped by exclude_noisy
    write_dl_rows(dl_source, rows)
    types = sorted({int(r["Coarse_lesion_type"]) for r in rows[1:]})
    out = tmp_path / "out"
    result = build(dl_recipe(source_options={"lesion_types": types, "exclude_noisy": True}), dl_source, out)
    listed = read_csv_rows(out / "unselected.csv")
    stems = [r["File_name"][:-4] for r in rows]
    assert [(r["sample_id"], r["filter"]) for r in listed] == sorted([(stems[0], "lesion_types"),
                                                                    (stems[1], "exclude_noisy")])
    summary = result.summary()
    assert summary["n_unselected"] == 2 and summary["unselected_by_filter"] == {"exclude_noisy": 1, "lesion_types": 1}
    assert manifest_of(out)["n_unselected"] == 2 and result.n_samples == 1
    assert "lesion_types: 1" in (out / "DATASET_CARD.md").read_text()
    assert verify(out).ok


def test_long_axis_filter_rows_carry_the_length(dl_source, tmp_path):
    out = tmp_path / "out"
    build(dl_recipe(source_options={"exclude_noisy": False, "long_axis_mm": [0.0, 0.001]}), dl_source, out)
    listed = read_csv_rows(out / "unselected.csv")
    assert len(listed) == 3 and {r["filter"] for r in listed} == {"long_axis_mm"}
    assert all("outside [0, 0.001]" in r["detail"] for r in listed)


def test_limit_and_split_targets_are_listed(dl_source, tmp_path):
    path = _recipe_file(tmp_path, "source_options: {exclude_noisy: false}\n"
                                  "split: {method: patient, seed: 0, counts: {train: 1}}\n")
    out = tmp_path / "out"
    result = invoke("build", "deeplesion", dl_source, "--recipe", path, "--out", out, "--limit", 2)
    assert result.exit_code == 0, result.output
    filters = sorted(r["filter"] for r in read_csv_rows(out / "unselected.csv"))
    assert filters == ["limit", "split"]
    assert json.loads(result.stdout)["unselected_by_filter"] == {"limit": 1, "split": 1}


def test_verify_counts_unselected_rows(dl_source, tmp_path):
    out = tmp_path / "out"
    build(dl_recipe(split={"method": "patient", "seed": 0, "counts": {"train": 1}}), dl_source, out)
    path = out / "unselected.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # drop one row
    result = invoke("verify", out)
    assert result.exit_code == EXIT_VERIFY and "unselected.csv" in result.stderr


@pytest.mark.realdata
def test_lidc_reader_filter_is_listed(lidc_root, tmp_path):
    out = tmp_path / "out"
    build(load_recipe("lidc"), lidc_root, out)
    listed = {r["sample_id"]: r for r in read_csv_rows(out / "unselected.csv")}
    # LIDC-IDRI-0002's one nodule has 2 readers; the recipe keeps exactly 4
    assert listed["LIDC-IDRI-0002_n01"]["filter"] == "min_readers"


def test_an_empty_split_is_warned_in_summary_stderr_and_card(dl_source, tmp_path):
    path = _recipe_file(tmp_path, "source_options: {exclude_noisy: false}\n"
                                  "split: {method: patient, seed: 0, fractions: {train: 0.99, val: 0.01}}\n")
    out = tmp_path / "out"
    result = invoke("build", "deeplesion", dl_source, "--recipe", path, "--out", out)
    assert result.exit_code == 0, result.output
    warning = "split val is empty: 0 samples (target 0)"
    assert json.loads(result.stdout)["warnings"] == [warning]
    assert f"warning: {warning}" in result.stderr
    assert warning in (out / "DATASET_CARD.md").read_text() and manifest_of(out)["warnings"] == [warning]
    dry = invoke("build", "deeplesion", dl_source, "--recipe", path, "--dry-run")
    assert json.loads(dry.stdout)["warnings"] == [warning] and warning in dry.stderr


def test_a_split_whose_every_sample_is_rejected_is_warned(dl_source, tmp_path):
    recipe = dl_recipe(split={"method": "patient", "seed": 0, "fractions": {"train": 0.67, "test": 0.33}})
    (test_shard,) = [s for s in plan_build(recipe, dl_source).shards if s.split == "test"]
    (ref,) = test_shard.refs
    png = next(p for r in dl_rows(dl_source) if r["File_name"] == ref.source_key for p in [key_png(dl_source, r)])
    png.write_bytes(b"not a png")
    out = tmp_path / "out"
    warnings = build(recipe, dl_source, out).warnings
    assert warnings == ["split test is empty: 0 samples (target 1)",
                        f"shard {test_shard.name} holds 0 samples (all 1 planned samples were rejected)"]


def test_no_warning_when_every_split_is_filled(dl_source, tmp_path):  # the oracle of the two above
    assert build(dl_recipe(), dl_source, tmp_path / "out").warnings == []


def test_non_utf8_dl_info_names_the_line(dl_source):
    path = dl_source / "DL_info.csv"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b",M,", b",\xff,", 1) if b",M," in lines[2] else lines[2][:5] + b"\xff" + lines[2][5:]
    path.write_bytes(b"".join(lines))
    result = invoke("build", "deeplesion", dl_source, "--recipe", "sample", "--dry-run")
    assert_one_line_error(result, EXIT_INPUT, "line 3", "0xff", "not UTF-8")


@pytest.fixture
def built3(dl_source, tmp_path):
    out = tmp_path / "built"
    assert build(dl_recipe(), dl_source, out).n_samples == 3
    return out


def test_preview_reports_what_it_drew(built3, tmp_path):
    result = invoke("preview", built3, "--n", 20, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 3 and report["n_requested"] == 20 and report["n_available"] == 3
    assert len(report["sample_ids"]) == 3 and "drew 3 of the 20" in result.stderr


def test_preview_of_a_corrupt_chunk_is_one_line(built3, tmp_path):
    (shard,) = sorted(built3.glob("*.h5"))
    with h5py.File(shard, "r") as f:
        info = f["image_hu"].id.get_chunk_info(1)
    data = bytearray(shard.read_bytes())
    data[info.byte_offset:info.byte_offset + info.size] = np.random.default_rng(0).bytes(info.size)
    shard.write_bytes(bytes(data))
    result = invoke("preview", shard, "--n", 3, "--out", tmp_path / "p.png")
    assert_one_line_error(result, EXIT_INPUT, shard.name, "sample 1 is unreadable")
    assert not (tmp_path / "p.png").exists()
