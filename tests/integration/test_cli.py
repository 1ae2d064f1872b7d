"""`softmask` CLI: build / inspect / verify / preview / phantom through click's CliRunner, exit
codes, and one real subprocess of `softmask make-lnsm` (what `make lnsm` runs)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from softmask_builder.cli import EXIT_EMPTY, EXIT_INPUT, EXIT_VERIFY, main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    result = invoke("phantom", "--out", root, "--n", 4, "--seed", 2)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 4
    return root


@pytest.fixture(scope="module")
def built(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    result = invoke("build", "deeplesion", phantom_root, "--recipe", "sample", "--out", out, "--progress")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout), result.stderr


def test_phantom_writes_a_deeplesion_layout(phantom_root):
    with open(phantom_root / "DL_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for row in rows:
        series, key = row["File_name"].rsplit("_", 1)
        assert (phantom_root / "Images_png" / series / key).is_file()


def test_dry_run_plans_without_writing(phantom_root, tmp_path):
    result = invoke("build", "deeplesion", phantom_root, "--recipe", "sample", "--out", tmp_path / "x", "--dry-run")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dry_run"] and summary["n_planned"] == 4 and sum(summary["splits"].values()) == 4
    assert not (tmp_path / "x").exists()


def test_build_summary_matches_the_shards(built):
    out, summary, stderr = built
    total = 0
    for shard in sorted(out.glob("*.h5")):
        with h5py.File(shard, "r") as f:
            total += f["image_hu"].shape[0]
    assert summary["n_samples"] == total == 4 - summary["n_rejects"]
    assert "sample" in stderr  # the progress bar went to stderr, stdout stayed JSON


def test_inspect_dir_and_shard(built):
    out, summary, _ = built
    result = invoke("inspect", out)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_samples"] == summary["n_samples"] and len(info["shards"]) == summary["n_shards"]
    shard = out / info["shards"][0]["file"]
    result = invoke("inspect", shard, "--sample", 0)
    assert result.exit_code == 0, result.output
    shard_info = json.loads(result.stdout)
    with h5py.File(shard, "r") as f:
        first_id = f["sample_id"].asstr()[0]
        assert shard_info["arrays"]["soft_mask"]["shape"] == list(f["soft_mask"].shape)
    assert shard_info["sample"]["sample_id"] == first_id == shard_info["sample_ids"][0]
    # Images get a range (and the trimap its value counts); coordinates are printed as values.
    sample = shard_info["sample"]
    with h5py.File(shard, "r") as f:
        trimap = f["trimap"][0]
        np.testing.assert_allclose(sample["recist_px"], f["recist_px"][0], rtol=1e-6)
    assert isinstance(sample["recist_px"], list) and "min" not in sample["recist_px"]
    values, counts = np.unique(trimap, return_counts=True)
    assert sample["trimap"]["counts"] == {str(int(v)): int(c) for v, c in zip(values, counts)}
    assert sample["image_hu"]["min"] <= sample["image_hu"]["max"]
    assert shard_info["n_samples"] == len(shard_info["sample_ids"])  # <= 10 ids: all shown, no note


def test_inspect_says_when_it_cuts_the_id_list(tmp_path):
    """A shard of 12 samples: 10 ids are listed and a note says 10 of 12."""
    from softmask_builder.dataset.build import make_plan, run_build

    from tests.softmask_builder.dataset.test_build import fake_labeller, fake_loader, make_refs, recipe

    plan = make_plan(recipe(samples_per_shard=64, split={"method": "patient", "counts": {"test": 12}}),
                     make_refs(12, per_patient=1))
    run_build(plan, tmp_path / "b", loader=fake_loader, labeller=fake_labeller)
    shard = sorted((tmp_path / "b").glob("*.h5"))[0]
    info = json.loads(invoke("inspect", shard).stdout)
    assert info["n_samples"] == 12 and len(info["sample_ids"]) == 10
    assert "10 of 12" in info["sample_ids_note"]


def test_verify_exit_codes(built, tmp_path):
    out, _, _ = built
    result = invoke("verify", out)
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = sorted(copy.glob("*.h5"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    result = invoke("verify", copy)
    assert result.exit_code == EXIT_VERIFY
    assert not json.loads(result.stdout)["ok"] and shard.name in result.stderr


def test_rerun_skips_and_a_different_recipe_is_refused(built, phantom_root, tmp_path):
    out, summary, _ = built
    result = invoke("build", "deeplesion", phantom_root, "--recipe", "sample", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_shards_skipped"] == summary["n_shards"]
    recipe = tmp_path / "other.yaml"
    recipe.write_text("dataset: lnsm_sample\nsource: deeplesion\nlabel: {band_px: 3.0}\n")
    result = invoke("build", "deeplesion", phantom_root, "--recipe", recipe, "--out", out)
    assert result.exit_code == EXIT_INPUT and "different plan" in result.stderr


def test_preview_writes_png(built, tmp_path):
    out, _, _ = built
    result = invoke("preview", out, "--n", 2, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(tmp_path / "p.png"))
    assert image is not None and image.shape[0] > 100


@pytest.mark.parametrize("args, text", [
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --backend dask"),
    (["--recipe", "lidc"], "source 'lidc'"),
    (["--recipe", "no_such_recipe"], "recipe not found"),
    (["--jobs", "0"], "--jobs"),
])
def test_usage_errors_exit_2(phantom_root, tmp_path, args, text):
    result = invoke("build", "deeplesion", phantom_root, "--out", tmp_path / "o", *args)
    assert result.exit_code == EXIT_INPUT, result.output
    assert text in result.stderr


def test_recipe_with_unknown_key_exits_2_naming_it(phantom_root, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("dataset: x\nsource: deeplesion\nlabel:\n  bandpx: 2\n")
    result = invoke("build", "deeplesion", phantom_root, "--recipe", recipe, "--out", tmp_path / "o")
    assert result.exit_code == EXIT_INPUT and "label.bandpx" in result.stderr


def test_dask_backend_without_dask_is_a_clear_error(phantom_root, tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import dask.distributed` raise ImportError, as when the
    # optional extra is not installed.
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    result = invoke("build", "deeplesion", phantom_root, "--out", tmp_path / "o", "--recipe", "sample",
                    "--backend", "dask")
    assert result.exit_code == EXIT_INPUT and "softmask-toolkit[dask]" in result.stderr
    assert not (tmp_path / "o").exists()


def test_dask_backend_builds_the_same_bytes(built, phantom_root, tmp_path):
    pytest.importorskip("dask.distributed")
    out, _, _ = built
    result = invoke("build", "deeplesion", phantom_root, "--out", tmp_path / "d", "--recipe", "sample",
                    "--backend", "dask", "-j", 2)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "SHA256SUMS").read_bytes() == (out / "SHA256SUMS").read_bytes()


def test_nothing_built_exits_4(phantom_root, tmp_path):
    recipe = tmp_path / "none.yaml"
    recipe.write_text("dataset: none\nsource: deeplesion\nsource_options: {long_axis_mm: [0.0, 0.01]}\n")
    result = invoke("build", "deeplesion", phantom_root, "--recipe", recipe, "--out", tmp_path / "o")
    assert result.exit_code == EXIT_EMPTY, result.output
    assert json.loads(result.stdout)["n_samples"] == 0 and (tmp_path / "o" / "manifest.json").is_file()
    # The error names both files with the counts that unselected.csv itself holds (issue 24).
    with open(tmp_path / "o" / "unselected.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["filter"] for r in rows} == {"long_axis_mm"}
    error = result.stderr.strip().splitlines()[-1]
    assert "rejects.csv" in error and "4 left out by the recipe's selection (long_axis_mm 4)" in error
    assert str(tmp_path / "o" / "unselected.csv") in error


def test_nested_steps_print_no_next_hint(phantom_root, tmp_path, monkeypatch):
    """A Makefile step inside a longer target (SOFTMASK_NO_HINTS=1) keeps its facts, drops "Next:"."""
    args = ("phantom", "--out", phantom_root, "--n", 4, "--seed", 2)
    assert "Next:" in invoke(*args).stderr
    monkeypatch.setenv("SOFTMASK_NO_HINTS", "1")
    result = invoke(*args)
    assert result.exit_code == 0 and "reused the phantom sample" in result.stderr and "Next:" not in result.stderr


def test_build_masks_folder(tmp_path):
    src = tmp_path / "pairs"
    src.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for i in range(4):
        mask = (yy - 24) ** 2 + (xx - 20 - i) ** 2 < (6 + i) ** 2
        image = np.where(mask, 30.0, -800.0) + rng.normal(0, 15, mask.shape)
        np.save(src / f"case{i}_s0.npy", image.astype(np.float32))
        cv2.imwrite(str(src / f"case{i}_s0_mask.png"), mask.astype(np.uint8) * 255)
    out = tmp_path / "out"
    result = invoke("build", "masks", src, "--out", out, "--recipe", "masks")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_samples"] == 4
    with h5py.File(next(out.glob("masks-*.h5")), "r") as f:
        binary, alpha = f["binary_mask"][0], f["soft_mask"][0]
    # Strategy 1 keeps the given mask as the binary ground truth; alpha agrees with it inside.
    assert binary.sum() > 0 and np.all(alpha[binary.astype(bool)] >= 0.0)
    assert invoke("verify", out).exit_code == 0


def test_make_lnsm_in_a_real_subprocess(tmp_path):
    exe = Path(sys.executable).parent / "softmask"
    out = tmp_path / "lnsm"
    proc = subprocess.run([str(exe), "make-lnsm", "--out", str(out), "--jobs", "2", "--n", "4", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["verify"]["ok"] and summary["build"]["n_samples"] == summary["verify"]["n_samples"] > 0
    assert (tmp_path / "lnsm-preview.png").is_file() and (tmp_path / "lnsm-phantom-source" / "DL_info.csv").is_file()
    # The release folder holds exactly what SHA256SUMS covers (plus SHA256SUMS and the build plan).
    covered = {line.split(None, 1)[1].strip() for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert {p.name for p in out.iterdir()} - {"SHA256SUMS", ".plan.json", ".lock"} == covered
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, check=True)


def test_report_writes_html_beside_the_dataset(built):
    out, _, _ = built
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    page = out.with_name(f"{out.name}-report.html")
    assert summary["report"] == str(page) and page.is_file()
    assert summary["n_samples"] == json.loads((out / "manifest.json").read_text())["n_samples"]
    assert invoke("report", out.parent / "missing").exit_code == EXIT_INPUT


def test_long_commands_end_with_one_human_line_on_stderr(built, phantom_root, tmp_path):
    """JSON on stdout, then one line on stderr naming what was built, where and what to run next."""
    out, summary, stderr = built
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"built {summary['n_samples']} samples of {summary['dataset']} into {out}")
    from softmask_builder.cli.summaries import tool

    assert f"Next: {tool('softmask')} verify {out}" in last
    # `dsnet train` is suggested exactly when the build has train and val samples (the manifest says).
    manifest = json.loads((out / "manifest.json").read_text())
    n = {split: manifest["splits"].get(split, {}).get("n_samples", 0) for split in ("train", "val")}
    assert ("dsnet train --data" in last) == (n["train"] > 0 and n["val"] > 0), (n, last)
    if n["val"] == 0:
        assert "not dsnet train: the val split is empty" in last
    cases = [
        (["verify", out], f"verify: {out} OK"),
        (["preview", out, "--n", 2, "--out", tmp_path / "p.png"], f"to {tmp_path / 'p.png'}"),
        (["report", out, "--out", tmp_path / "r.html"], f"to {tmp_path / 'r.html'}"),
        (["phantom", "--out", phantom_root, "--n", 4, "--seed", 2], f"reused the phantom sample (4 cases, seed 2)"),
        (["build", "deeplesion", phantom_root, "--recipe", "sample", "--out", tmp_path / "d", "--dry-run"],
         "nothing written"),
    ]
    for args, text in cases:
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)  # stdout is the JSON alone
        lines = result.stderr.strip().splitlines()
        assert lines and text in lines[-1], (args, result.stderr)


def test_the_phantom_sample_is_licensed_as_its_lidc_shapes(built):
    """The bundled sample (hybrid phantom: LIDC-IDRI shapes, synthetic backgrounds, read by the
    DeepLesion adapter) is CC BY 3.0 in the card and croissant.json, not DeepLesion's terms."""
    out, _, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"] == {"phantom": "hybrid", "shapes": "lidc", "backgrounds": ["synthetic"]}
    card = (out / "DATASET_CARD.md").read_text()
    front = card[:card.index("\n---\n", 4)]
    assert "license: cc-by-3.0" in front and "DeepLesion" not in front
    doc = json.loads((out / "croissant.json").read_text())
    assert doc["license"] == "https://creativecommons.org/licenses/by/3.0/"
    assert "DeepLesion terms" not in doc["description"] and "Armato" in doc["citeAs"]


def test_progress_off_a_terminal_is_periodic_lines(built):
    """`--progress` without a terminal (CliRunner's stderr, like CI or `make | tee`) prints lines."""
    out, summary, stderr = built
    lines = [l for l in stderr.splitlines() if l.startswith("build: ")]
    assert lines and lines[-1].startswith(f"build: {summary['n_planned']}/{summary['n_planned']} samples (100 %)")
