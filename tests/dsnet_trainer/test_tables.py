"""scripts/run_tables.py on a tiny sample: runs trained once and skipped when finished; paired
per-crop differences and their t intervals against an independent recomputation from per_crop.csv."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from .shardkit import make_sample_arrays, write_sample_shard

ROOT = Path(__file__).resolve().parents[2]


def _tables_module():
    spec = importlib.util.spec_from_file_location("run_tables", ROOT / "scripts" / "run_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    for split, n, prefix in (("train", 6, "T"), ("val", 3, "V"), ("test", 7, "X")):
        write_sample_shard(data / f"synth-{split}-00000-of-00001.h5", make_sample_arrays(rng, n), split=split,
                           patient_prefix=prefix)
    from dsnet_trainer.models import build_model
    from dsnet_trainer.models.teacher import export_teacher
    from dsnet_trainer.sr.config import GeneratorConfig, SRConfig

    cfg = SRConfig(generator=GeneratorConfig(n_channels=4, n_blocks=1))
    teacher = export_teacher(build_model("srresnet", **cfg.generator_kwargs()), cfg, tmp_path / "teacher.pt",
                             train_patients={"synth": ["T0", "T1", "T2"]})
    return data, teacher


def _per_crop(folder: Path) -> dict[str, float]:
    with open(folder / "per_crop.csv", newline="") as fh:
        return {r["sample_id"]: float(r["dice"]) for r in csv.DictReader(fh)}


def test_tables_regenerate_and_skip_finished_runs(tiny, tmp_path, capsys):
    data, teacher = tiny
    out = tmp_path / "tables"
    argv = ["--data", str(data), "--teacher", str(teacher), "--out", str(out), "--rows", "unet,backbone,drtm",
            "--seeds", "2", "--extra-seeds", "1", "-s", "optim.epochs=1", "-s", "loop.max_steps_per_epoch=2",
            "-s", "model.widths=[4,8]", "-s", "data.crop_px=32", "-s", "loop.batch_size=2",
            "-s", "model.teacher_mode=native", "-s", "optim.lr=0.01"]
    mod = _tables_module()
    assert mod.main(argv) == 0
    first = capsys.readouterr()
    assert first.err.count(": training") == 6  # unet, backbone, drtm are core rows: 2 seeds each
    result = json.loads((out / "tables.json").read_text())
    assert result["n_crops"] == 7 and result["n_small"] + result["n_large"] == 7

    # independent recomputation of backbone vs U-Net from the per-crop files
    def seed_avg(row):
        runs = [_per_crop(out / f"{row}-s{s}" / "eval-test") for s in (0, 1)]
        return {k: np.mean([r[k] for r in runs]) for k in runs[0]}

    b, u = seed_avg("backbone"), seed_avg("unet")
    diff = np.array([b[k] - u[k] for k in sorted(b)])
    got = result["rows"]["backbone"]["vs_unet"]
    assert got["mean"] == pytest.approx(diff.mean(), abs=1e-9)
    if diff.std() > 0:
        lo, hi = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
        assert got["ci95"] == pytest.approx([lo, hi], abs=1e-9)
    assert got["n_better"] == int((diff > 0).sum())
    seeds = [np.mean(list(_per_crop(out / f"drtm-s{s}" / "eval-test").values())) for s in (0, 1)]
    assert result["rows"]["drtm"]["dice_std"] == pytest.approx(np.std(seeds, ddof=1), abs=1e-9)
    md = (out / "TABLES.md").read_text()
    assert "### Table III" in md and "| backbone | 2 |" in md

    stamp = (out / "unet-s0" / "eval-test" / "metrics.json").stat().st_mtime_ns
    assert mod.main(argv) == 0
    again = capsys.readouterr()
    assert ": training" not in again.err and again.err.count("finished, skipped") == 6
    assert (out / "unet-s0" / "eval-test" / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "tables.json").read_text())["rows"] == result["rows"]


def test_study_cells_record_parallel_jobs_and_rebuild_from_the_record(tiny, tmp_path, capsys):
    data, teacher = tiny
    out, record = tmp_path / "runs", tmp_path / "record"
    sets = ["-s", "optim.epochs=1", "-s", "loop.max_steps_per_epoch=2", "-s", "model.widths=[4,8]",
            "-s", "data.crop_px=32", "-s", "loop.batch_size=2", "-s", "model.teacher_mode=native",
            "-s", "loop.num_threads=1"]
    rows = "unet,drtm_soft.l1w10.crop_band,drtm_soft.l1w100.pixel_mean"
    argv = ["--data", str(data), "--teacher", str(teacher), "--out", str(out), "--rows", rows, "--seeds", "1",
            "--extra-seeds", "2", "--record", str(record), "--jobs", "2", *sets]
    mod = _tables_module()
    assert mod.plan_runs(rows.split(","), 1, 2) == [
        ("unet", 0), ("drtm_soft.l1w10.crop_band", 0), ("drtm_soft.l1w100.pixel_mean", 0),
        ("drtm_soft.l1w10.crop_band", 1), ("drtm_soft.l1w100.pixel_mean", 1)]
    assert mod.main(argv) == 0
    capsys.readouterr()
    info = json.loads((out / "drtm_soft.l1w10.crop_band-s1" / "table_run.json").read_text())
    assert info["seed"] == 1 and info["row"] == "drtm_soft.l1w10.crop_band"
    assert "optim.epochs=1" in info["sets"] and not any(x.startswith("loop.num_threads") for x in info["sets"])
    cfg = (out / "drtm_soft.l1w10.crop_band-s1" / "config.yaml").read_text()
    assert "l1_reduction: crop_band" in cfg and "l1_weight: 10" in cfg and "loop" in cfg
    # the selection score is the validation history's best window (select_k 5 > 1 epoch: the last one)
    assert info["select_score"] == pytest.approx(info["val_dice_history"][-1][1])
    result = json.loads((out / "tables.json").read_text())
    assert set(result["rows"]) == {"unet", "drtm_soft.l1w10.crop_band", "drtm_soft.l1w100.pixel_mean"}
    assert "Soft Mask L1 study" in (record / "TABLES.md").read_text()
    for name in ("unet-s0", "drtm_soft.l1w100.pixel_mean-s1"):
        assert sorted(p.name for p in (record / name).iterdir()) == sorted(mod.RECORD_FILES)

    # the committed record alone rebuilds the same tables
    only = tmp_path / "rebuilt"
    assert mod.main(["--data", str(data), "--out", str(only), "--rows", rows, "--seeds", "1", "--extra-seeds", "2",
                     "--record", str(record), "--no-train", *sets]) == 0
    assert ": training" not in capsys.readouterr().err
    assert json.loads((only / "tables.json").read_text())["rows"] == result["rows"]
    # --no-train lists what is missing instead of training it
    mod.main(["--data", str(data), "--out", str(only), "--rows", "backbone", "--seeds", "1", "--no-train", *sets])
    assert "not finished (1): backbone-s0" in capsys.readouterr().err
    # another schedule is refused, naming the run
    with pytest.raises(SystemExit, match="unet-s0 was trained with another config.*optim.epochs: 1 there, 2 here"):
        mod.main([*argv[:-2], "-s", "optim.epochs=2"])
    # an override that only restates a default is the same config, and a key the variant never
    # reads (lambda2 for the U-Net) does not count: not refused
    assert mod.main([*argv, "-s", "optim.dice_weight=0.5"]) == 0
    assert ": training" not in capsys.readouterr().err
    assert mod.main(["--data", str(data), "--out", str(out), "--rows", "unet", "--seeds", "1", "--no-train",
                     *sets, "-s", "optim.l1_weight=3"]) == 0
    assert "unet-s0: finished, skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="neither a variant"):
        mod.main(["--data", str(data), "--out", str(only), "--rows", "drtm_soft.l1wX", "--no-train"])

    # every teacher-using run records the teacher's weights digest, the tables name it, and another
    # teacher (other weights) is refused for a finished run
    from dsnet_trainer.models.teacher import read_teacher_file

    digest = read_teacher_file(teacher)["weights_sha256"]
    assert info["teacher_weights_sha256"] == digest
    assert "teacher_weights_sha256" not in json.loads((out / "unet-s0" / "table_run.json").read_text())
    md = (record / "TABLES.md").read_text()
    assert f"SR teacher weights sha256 {digest}: 4 runs (" in md and "unet-s0" not in md.split("sha256")[-1]
    from dsnet_trainer.models import build_model
    from dsnet_trainer.models.teacher import export_teacher
    from dsnet_trainer.sr.config import GeneratorConfig, SRConfig

    import torch

    torch.manual_seed(123)
    c2 = SRConfig(generator=GeneratorConfig(n_channels=4, n_blocks=1))
    other = export_teacher(build_model("srresnet", **c2.generator_kwargs()), c2, tmp_path / "other.pt",
                           train_patients={"synth": ["T0"]})
    assert read_teacher_file(other)["weights_sha256"] != digest
    other_teacher = r"drtm_soft.l1w10.crop_band-s0 was trained with another config.*SR teacher \(weights sha256\)"
    with pytest.raises(SystemExit, match=other_teacher):
        mod.main(["--data", str(data), "--teacher", str(other), *argv[4:]])
    # a run without a recorded digest (an earlier version of the script) is listed as such
    for name in ("drtm_soft.l1w10.crop_band-s0", "drtm_soft.l1w10.crop_band-s1"):
        t = json.loads((record / name / "table_run.json").read_text())
        del t["teacher_weights_sha256"]
        (record / name / "table_run.json").write_text(json.dumps(t))
    assert mod.main(["--data", str(data), "--out", str(tmp_path / "r2"), "--rows", rows, "--seeds", "1",
                     "--extra-seeds", "2", "--record", str(record), "--no-train", *sets]) == 0
    md = (record / "TABLES.md").read_text()
    assert "SR teacher not recorded (trained before" in md and f"sha256 {digest}: 2 runs (" in md

    # the build is recorded, another build is refused, and runs whose ground truth disagrees are
    # never put in one table (also when they recorded no digest)
    assert "data_manifest_sha256" in info   # None here: the tiny sample has no manifest
    (data / "manifest.json").write_text("{}")
    assert mod.data_digest(str(data)) == hashlib.sha256(b"{}").hexdigest()
    for folder in (out, record):
        t = json.loads((folder / "unet-s0" / "table_run.json").read_text())
        t["data_manifest_sha256"] = "f" * 64
        (folder / "unet-s0" / "table_run.json").write_text(json.dumps(t))
    other_build = r"unet-s0 was trained with another config.*sample build \(manifest sha256\): f{12}"
    with pytest.raises(SystemExit, match=other_build):
        mod.main(argv)
    (data / "manifest.json").unlink()
    crop_csv = record / "drtm_soft.l1w100.pixel_mean-s1" / "per_crop.csv"
    lines = crop_csv.read_text().splitlines()
    head, first = lines[0].split(","), lines[1].split(",")
    first[head.index("gt_px")] = str(int(first[head.index("gt_px")]) + 1)
    crop_csv.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    with pytest.raises(SystemExit, match="evaluated on different ground truth"):
        mod.main(["--data", str(data), "--out", str(tmp_path / "r3"), "--rows", rows, "--seeds", "1",
                  "--extra-seeds", "2", "--record", str(record), "--no-train", *sets])


def test_l1_default_rule_prefers_the_paper_cell_only_within_one_seed_std():
    mod = _tables_module()

    def stats(cells):
        return {"rows": {r: {"val_select_mean": m, "val_select_std": s} for r, (m, s) in cells.items()}}

    paper, other = mod.PAPER_L1_CELL, "drtm_soft.l1w1.crop_band"
    tie = mod.choose_l1_default(stats({paper: (0.80, 0.01), other: (0.805, 0.01)}))
    assert tie["best"] == other and tie["chosen"] == paper and set(tie["ties"]) == {paper, other}
    clear = mod.choose_l1_default(stats({paper: (0.80, 0.01), other: (0.83, 0.01)}))
    assert clear["chosen"] == other and clear["ties"] == [other]
    assert mod.choose_l1_default({"rows": {"unet": {"val_select_mean": 0.9}}}) is None


# ---- the truth study's statistics (issue 25) ------------------------------------------------
def test_clustered_interval_reduces_to_t_intervals_in_its_special_cases():
    mod = _tables_module()
    rng = np.random.default_rng(3)
    d = rng.normal(0.02, 0.05, 40)
    # one crop per cluster: the plain t interval (scipy's)
    mean, lo, hi = mod.clustered_interval(d, np.arange(40))
    ref = stats.t.interval(0.95, 39, loc=d.mean(), scale=stats.sem(d))
    assert mean == pytest.approx(d.mean()) and (lo, hi) == pytest.approx(ref)
    # equal clusters of 4: the t interval of the 10 cluster means
    clusters = np.repeat(np.arange(10), 4)
    means = d.reshape(10, 4).mean(axis=1)
    mean, lo, hi = mod.clustered_interval(d, clusters)
    ref = stats.t.interval(0.95, 9, loc=means.mean(), scale=stats.sem(means))
    assert mean == pytest.approx(means.mean()) and (lo, hi) == pytest.approx(ref)
    # clustering widens the interval when crops of a patient move together
    shared = np.repeat(rng.normal(0, 0.05, 10), 4) + rng.normal(0, 0.005, 40)
    _, lo_c, hi_c = mod.clustered_interval(shared, clusters)
    _, lo_i, hi_i = mod.clustered_interval(shared, np.arange(40))
    assert hi_c - lo_c > 2 * (hi_i - lo_i)
    assert np.isnan(mod.clustered_interval(d[:3], [0, 0, 0])[1])
    with pytest.raises(ValueError, match="one length"):
        mod.clustered_interval(d, clusters[:-1])


def test_clustered_interval_unequal_clusters_hand_case():
    mod = _tables_module()
    # clusters a: [1, 3] (sum 4, n 2), b: [2] (sum 2, n 1), c: [0, 0, 3] (sum 3, n 3); mean 9/6 = 1.5
    # residuals d_c - mean n_c: 1, 0.5, -1.5 -> sum of squares 3.5; var = 3/2 * 3.5 / 36
    mean, lo, hi = mod.clustered_interval([1, 3, 2, 0, 0, 3], ["a", "a", "b", "c", "c", "c"])
    half = stats.t.ppf(0.975, 2) * np.sqrt(1.5 * 3.5 / 36)
    assert mean == 1.5 and (lo, hi) == pytest.approx((1.5 - half, 1.5 + half))


def test_collapse_rule_puts_the_collapsed_seed_apart():
    mod = _tables_module()
    select = {"dsnet_binary": {"s0": 0.73, "s1": 0.89, "s2": 0.885},      # the collapsed run
              "dsnet": {"s0": 0.89, "s1": 0.87, "s2": 0.883},             # 0.87 is within 0.05: kept
              "drift": {"s0": 0.90, "s1": 0.84, "s2": 0.91},              # 0.84 < 0.905 - 0.05
              "alone": {"s0": 0.79}, "missing": {"s0": None, "s1": 0.9}}
    assert mod.collapsed_runs(select) == {"dsnet_binary": ["s0"], "drift": ["s1"], "alone": ["s0"],
                                          "missing": ["s0"]}


def test_nnunet_steps_schedule_is_exact_and_near_250_iterations():
    spec = importlib.util.spec_from_file_location("nnunet_steps", ROOT / "scripts" / "nnunet_steps_trainer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # 3810 = 2 * 3 * 5 * 127: 15 epochs of 254 iterations (the nearest divisor pair to 250)
    assert mod.schedule_for_steps(3810) == (15, 254)
    assert mod.schedule_for_steps(250_000) == (1000, 250)  # nnU-Net's default schedule
    assert mod.schedule_for_steps(127) == (1, 127)          # a prime below 250: one epoch
    for total in (1, 997, 3810, 12_000):
        e, it = mod.schedule_for_steps(total)
        assert e * it == total
    with pytest.raises(ValueError, match="total_steps"):
        mod.schedule_for_steps(0)


def test_nnunet_batch_size_comes_from_the_plans_unless_set(monkeypatch):
    spec = importlib.util.spec_from_file_location("nnunet_steps", ROOT / "scripts" / "nnunet_steps_trainer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delenv("NNUNET_BATCH_SIZE", raising=False)
    assert mod.batch_size_from_env(285) == 285
    monkeypatch.setenv("NNUNET_BATCH_SIZE", " ")
    assert mod.batch_size_from_env(285) == 285
    monkeypatch.setenv("NNUNET_BATCH_SIZE", "8")
    assert mod.batch_size_from_env(285) == 8
    for bad in ("0", "-3", "eight"):
        monkeypatch.setenv("NNUNET_BATCH_SIZE", bad)
        with pytest.raises(ValueError, match="NNUNET_BATCH_SIZE"):
            mod.batch_size_from_env(285)


def test_record_keeps_the_truth_columns_when_the_evaluation_has_them(tmp_path):
    mod = _tables_module()
    head_plain = "sample_id,gt_px,pred_px,dice,dice_tval,sen,ppv,dice_smooth,sad,mse"
    head_truth = head_plain + ",true_px,dice_true,sen_true,dice_true_tval,sad_true,mse_true,hd95_px,surface_dice_1px"
    for name, head, row in (("plain", head_plain, "a,4,5,0.9,0.9,1,0.8,0.9,0.5,0.01"),
                            ("truth", head_truth, "a,4,5,0.9,0.9,1,0.8,0.9,0.5,0.01,6,0.8,0.8,0.75,1.5,0.02,1,0.9")):
        run = tmp_path / name
        (run / "eval-test").mkdir(parents=True)
        (run / "eval-test" / "per_crop.csv").write_text(head + "\n" + row + "\n")
        mod._record(run, tmp_path / "record", name)
    plain = (tmp_path / "record" / "plain" / "per_crop.csv").read_text().splitlines()
    truth = (tmp_path / "record" / "truth" / "per_crop.csv").read_text().splitlines()
    assert plain == ["sample_id,gt_px,pred_px,dice,sen,ppv,sad", "a,4,5,0.9,1,0.8,0.5"]  # as before issue 25
    assert truth == ["sample_id,gt_px,pred_px,dice,sen,ppv,sad,true_px,dice_true,dice_true_tval,sad_true,hd95_px,"
                     "surface_dice_1px", "a,4,5,0.9,1,0.8,0.5,6,0.8,0.75,1.5,1,0.9"]


def test_truth_tables_put_collapsed_runs_apart_and_cluster_by_patient(tmp_path):
    mod = _tables_module()
    head = "sample_id,gt_px,dice,dice_true_tval,sad_true\n"
    ids = [f"c{i}" for i in range(6)]
    patients = {s: f"P{i // 2}" for i, s in enumerate(ids)}  # 3 background patients of 2 crops
    values = {"unet-s0": [0.80] * 6, "unet-s1": [0.82] * 6,
              "arm-s0": [0.85, 0.86, 0.84, 0.83, 0.90, 0.88], "arm-s1": [0.87, 0.86, 0.86, 0.85, 0.90, 0.90],
              "arm-s2": [0.10] * 6}                              # the collapsed seed
    runs, names = {}, {}
    for name, vals in values.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "per_crop.csv").write_text(head + "".join(f"{s},10,0.9,{v},{2 * v}\n" for s, v in zip(ids, vals)))
        row = name.split("-")[0]
        runs.setdefault(row, []).append(folder)
        names.setdefault(row, []).append(name)
    select = {"unet": [0.88, 0.89], "arm": [0.90, 0.91, 0.62]}
    truth = mod.summarise_truth(runs, names, select, patients)
    assert truth["collapsed"] == {"arm": ["arm-s2"]}
    arm = truth["rows"]["arm"]
    assert arm["n_kept"] == 2 and arm["primary_seed_means"] == pytest.approx([0.86, 0.8733333333])
    # oracle: per-crop differences of the kept seeds' means, clustered by patient by hand
    diff = np.mean([values["arm-s0"], values["arm-s1"]], axis=0) - 0.81
    per_patient = diff.reshape(3, 2).mean(axis=1)               # equal clusters: t on patient means
    ref = stats.t.interval(0.95, 2, loc=per_patient.mean(), scale=stats.sem(per_patient))
    assert arm["primary_vs_ref"]["mean"] == pytest.approx(diff.mean())
    assert arm["primary_vs_ref"]["ci95"] == pytest.approx(list(ref))
    md = mod.format_truth_tables(truth)
    assert "Collapsed (left out of arm's means by the written rule): arm-s2." in md and "| arm | 2/3 |" in md
    # an evaluation without the truth columns: no truth tables at all
    (runs["unet"][0] / "per_crop.csv").write_text("sample_id,gt_px,dice\nc0,10,0.9\n")
    assert mod.summarise_truth(runs, names, select, patients) is None


def _truth_build(data, *, seed):
    """A tiny schema-3 build whose shards carry a true fraction (6 train, 3 val, 6 test crops)."""
    rng = np.random.default_rng(seed)
    for split, n, prefix in (("train", 6, "T"), ("val", 3, "V"), ("test", 6, "X")):
        arrays = make_sample_arrays(rng, n)
        arrays["true_fraction"] = np.clip(arrays["soft_mask"] - 0.2, 0, 1).astype(np.float32)
        write_sample_shard(data / f"synth-{split}-00000-of-00001.h5", arrays, split=split, patient_prefix=prefix,
                           schema_version=3)
    return data


def test_tables_of_a_build_with_the_truth_end_with_the_truth_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = _truth_build(tmp_path / "data", seed=2)
    out = tmp_path / "tables"
    argv = ["--data", str(data), "--out", str(out), "--rows", "unet,backbone", "--seeds", "1",
            "-s", "optim.epochs=1", "-s", "loop.max_steps_per_epoch=1", "-s", "model.widths=[4,8]",
            "-s", "data.crop_px=32", "-s", "loop.batch_size=2", "--no-verify"]
    mod = _tables_module()
    assert mod.main(argv) == 0
    capsys.readouterr()
    # one-step toy runs are far below the collapse floor: both are put apart, nothing is averaged
    truth = json.loads((out / "tables.json").read_text())["truth"]
    assert truth["collapsed"] == {"backbone": ["backbone-s0"], "unet": ["unet-s0"]}
    assert "Collapsed (left out of unet's means by the written rule): unet-s0." in (out / "TABLES.md").read_text()
    monkeypatch.setattr(mod, "COLLAPSE_FLOOR", 0.0)   # judge them as real runs (finished: not retrained)
    assert mod.main(argv) == 0
    truth = json.loads((out / "tables.json").read_text())["truth"]
    per = {}
    for row in ("unet", "backbone"):
        with open(out / f"{row}-s0" / "eval-test" / "per_crop.csv", newline="") as fh:
            per[row] = {r["sample_id"]: float(r["dice_true_tval"]) for r in csv.DictReader(fh)}
    diff = np.array([per["backbone"][k] - per["unet"][k] for k in sorted(per["unet"])])
    assert truth["rows"]["backbone"]["primary_vs_ref"]["mean"] == pytest.approx(diff.mean(), abs=1e-6)
    assert truth["rows"]["backbone"]["primary_vs_ref"]["n_clusters"] == 3  # patients X0, X1, X2
    assert "### Scored against the phantom's truth" in (out / "TABLES.md").read_text()
    # an external row under a label that states its budget (here: the U-Net's report standing in)
    label = "nnunet_2d 3810 steps (1.5 % of default)"
    assert mod.main([*argv, "--nnunet", str(out / "unet-s0" / "eval-test"), "--nnunet-label", label]) == 0
    tables = json.loads((out / "tables.json").read_text())
    assert label in tables["rows"] and f"| {label} | 1 |" in (out / "TABLES.md").read_text()
    # with the truth columns it joins the truth table as a peer of the U-Net row, never judged by the
    # collapse rule and never given a verdict; the same report as unet-s0: a difference of exactly 0
    assert tables["truth"]["rows"][label]["external"] and label not in tables["truth"]["collapsed"]
    peer = [c for c in tables["truth"]["comparisons"] if c["arm"] == label]
    assert [(c["reference"], c["verdict"]) for c in peer] == [("unet", "peer (reported)")]
    assert peer[0]["primary"]["mean"] == 0.0 and "seed_means" not in peer[0]
    assert f"| {label} | 1 run (no seeds) |" in (out / "TABLES.md").read_text()
    # a report without the truth columns (another build, or no val predictions): left out of the truth table
    plain = tmp_path / "plain-report"
    plain.mkdir()
    (plain / "metrics.json").write_text((out / "unet-s0" / "eval-test" / "metrics.json").read_text())
    with open(out / "unet-s0" / "eval-test" / "per_crop.csv", newline="") as fh:
        kept = [{k: r[k] for k in ("sample_id", "gt_px", "pred_px", "dice", "sen", "ppv", "sad")} for r in csv.DictReader(fh)]
    with open(plain / "per_crop.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    capsys.readouterr()
    assert mod.main([*argv, "--nnunet", str(plain), "--nnunet-label", label]) == 0
    assert f"{label}: left out of the truth table" in capsys.readouterr().err
    tables = json.loads((out / "tables.json").read_text())
    assert label in tables["rows"] and label not in tables["truth"]["rows"]
    assert not [c for c in tables["truth"]["comparisons"] if c["arm"] == label]


# ---- the truth study's arms A0-A4 and the design's comparisons (issue 25) ----------------------
def test_truth_arms_map_to_the_unet_soft_configs_of_the_design():
    from dsnet_trainer.config import load_config
    from dsnet_trainer.seg_config import SegConfig

    mod = _tables_module()
    want = {"A0": (0.0, "label"), "A1": (1.0, "label"), "A2": (1.0, "binary"), "A3": (1.0, "true_fraction"),
            "A4": (0.0, "true_mask")}   # (lambda2, train target); seg_tiny's lambda2 is 1
    assert list(mod.TRUTH_ARMS) == list(want)
    for arm, (l1, target) in want.items():
        cfg = load_config(SegConfig, "seg_tiny", mod.row_overrides(arm))
        assert (cfg.model.variant, cfg.optim.l1_weight, cfg.data.train_target) == ("unet_soft", l1, target)
        assert mod.row_variant(arm) == "unet_soft" and not mod._uses_teacher(arm)
    # arms get --seeds seeds (the design: 5), like the core rows; other rows --extra-seeds
    plan = mod.plan_runs(["unet", "A0", "A1", "dsnet_kats"], 5, 2)
    assert sum(r == "A0" for r, _ in plan) == 5 and sum(r == "dsnet_kats" for r, _ in plan) == 2
    # a -s on a key the arms set would turn one arm into another: refused, naming it
    with pytest.raises(SystemExit, match="-s optim.l1_weight: set by the truth-study arms"):
        mod.check_truth_sets(["unet", "A0", "A1"], ["loop.num_threads=1", "optim.l1_weight=10"])
    mod.check_truth_sets(["unet", "A0"], ["loop.num_threads=1", "optim.epochs=3"])
    mod.check_truth_sets(["drtm_soft"], ["optim.l1_weight=10"])   # no arm: the L1 study may set it
    with pytest.raises(SystemExit, match="truth-study arm"):
        mod.row_overrides("A9")


def test_truth_comparisons_pair_the_design_arms_with_clustered_and_seed_intervals(tmp_path):
    mod = _tables_module()
    rng = np.random.default_rng(7)
    ids = [f"c{i}" for i in range(8)]
    patients = {s: f"P{i // 2}" for i, s in enumerate(ids)}   # 4 background patients of 2 crops
    base = rng.uniform(0.7, 0.9, size=8)
    shift = {"A0": 0.0, "A1": 0.03, "A2": 0.03, "A3": 0.05, "A4": 0.08}
    values, select = {}, {}
    for arm, d in shift.items():
        for seed in range(3):
            values[f"{arm}-s{seed}"] = base + d + rng.normal(0, 0.002, size=8)
            select.setdefault(arm, []).append(0.90)
    values["A0-s2"] = np.full(8, 0.2)   # A0's seed 2 collapsed: out of A0's means and of the seed pairing
    select["A0"][2] = 0.55
    head = "sample_id,gt_px,dice,dice_true_tval,sad_true\n"
    runs, names = {}, {}
    for name, vals in values.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "per_crop.csv").write_text(head + "".join(f"{s},10,0.9,{v},{3 - v}\n" for s, v in zip(ids, vals)))
        row = name.split("-")[0]
        runs.setdefault(row, []).append(folder)
        names.setdefault(row, []).append(name)
    truth = mod.summarise_truth(runs, names, select, patients)
    assert truth["collapsed"] == {"A0": ["A0-s2"]}
    comps = {(c["arm"], c["reference"]): c for c in truth["comparisons"]}
    assert list(comps) == [("A1", "A0"), ("A1", "A2"), ("A3", "A1"), ("A4", "A1")]

    def oracle(arm, ref, seeds_arm, seeds_ref):
        a = np.mean([values[f"{arm}-s{s}"] for s in seeds_arm], axis=0)
        r = np.mean([values[f"{ref}-s{s}"] for s in seeds_ref], axis=0)
        per_patient = (a - r).reshape(4, 2).mean(axis=1)            # equal clusters: t on patient means
        crop = stats.t.interval(0.95, 3, loc=per_patient.mean(), scale=stats.sem(per_patient))
        common = sorted(set(seeds_arm) & set(seeds_ref))
        sd = np.array([values[f"{arm}-s{s}"].mean() - values[f"{ref}-s{s}"].mean() for s in common])
        seed = stats.t.interval(0.95, len(sd) - 1, loc=sd.mean(), scale=stats.sem(sd))
        return (a - r).mean(), crop, sd.mean(), seed, common

    for (arm, ref), c in comps.items():
        m, crop, sm, seed, common = oracle(arm, ref, [0, 1, 2], [0, 1] if ref == "A0" else [0, 1, 2])
        assert c["primary"]["mean"] == pytest.approx(m) and c["primary"]["ci95"] == pytest.approx(list(crop))
        assert c["primary"]["n_clusters"] == 4
        assert c["seed_means"]["seeds"] == common and c["seed_means"]["mean"] == pytest.approx(sm)
        assert c["seed_means"]["ci95"] == pytest.approx(list(seed))
        assert c["secondary"]["mean"] == pytest.approx(-m)          # SAD here is 3 - Dice
    # A1 - A0: +3 points, interval above 0 -> confirmed (this build); A1 - A2: ~0, within +-1 -> refuted
    assert comps[("A1", "A0")]["verdict"] == "confirmed" and comps[("A1", "A2")]["verdict"] == "refuted"
    assert comps[("A3", "A1")]["verdict"] == "bound (reported)"
    md = mod.format_truth_tables(truth)
    assert "| A1 − A0 | decides (a): Soft Mask supervision helps | +3." in md and "| refuted |" in md
    assert "(2) |" in md and "Collapsed (left out of A0's means by the written rule): A0-s2." in md
    # more than one collapsed seed: the arm is unstable and gets no decision
    select["A0"][1] = 0.55
    again = {(c["arm"], c["reference"]): c for c in mod.summarise_truth(runs, names, select, patients)["comparisons"]}
    assert again[("A1", "A0")]["verdict"] == "unstable"


def test_truth_verdict_follows_the_written_rule():
    mod = _tables_module()
    assert mod.truth_verdict(0.012, 0.001, 0.023) == "confirmed"
    assert mod.truth_verdict(0.008, 0.001, 0.015) == "undecided"     # above 0 but under one point
    assert mod.truth_verdict(0.0, -0.009, 0.009) == "refuted"
    assert mod.truth_verdict(0.0, -0.02, 0.02) == "undecided"
    assert mod.truth_verdict(0.02, float("nan"), float("nan")) == "undecided"


def test_truth_study_trains_its_arms_and_ends_with_the_design_comparisons(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = _truth_build(tmp_path / "data", seed=3)
    out = tmp_path / "truth"
    argv = ["--data", str(data), "--out", str(out), "--rows", "unet", "--study", "truth", "--seeds", "1",
            "-s", "optim.epochs=1", "-s", "loop.max_steps_per_epoch=1", "-s", "model.widths=[4,8]",
            "-s", "data.crop_px=32", "-s", "loop.batch_size=2", "--no-verify"]
    mod = _tables_module()
    with pytest.raises(SystemExit, match="data.train_target: set by the truth-study arms"):
        mod.main([*argv, "-s", "data.train_target=label"])
    monkeypatch.setattr(mod, "COLLAPSE_FLOOR", 0.0)   # one-step toy runs: judge them as real runs
    assert mod.main(argv) == 0
    for arm, (l1, target) in {"A0": (0.0, "label"), "A2": (1.0, "binary"), "A4": (0.0, "true_mask")}.items():
        eff = json.loads((out / f"{arm}-s0" / "table_run.json").read_text())["effective"]
        got = (eff["model"]["variant"], eff["optim"]["l1_weight"], eff["data"]["train_target"])
        assert got == ("unet_soft", l1, target)
    truth = json.loads((out / "tables.json").read_text())["truth"]
    assert [(c["arm"], c["reference"]) for c in truth["comparisons"]] == [("A1", "A0"), ("A1", "A2"), ("A3", "A1"),
                                                                           ("A4", "A1")]
    per = {}
    for arm in ("A1", "A0"):
        with open(out / f"{arm}-s0" / "eval-test" / "per_crop.csv", newline="") as fh:
            per[arm] = {r["sample_id"]: float(r["dice_true_tval"]) for r in csv.DictReader(fh)}
    diff = np.array([per["A1"][k] - per["A0"][k] for k in sorted(per["A0"])])
    assert truth["comparisons"][0]["primary"]["mean"] == pytest.approx(diff.mean(), abs=1e-6)
    md = (out / "TABLES.md").read_text()
    assert "#### The design's comparisons" in md and "| A4 − A1 | bound: clean labels |" in md
    assert "### Truth study arms A" in md
    capsys.readouterr()
    assert mod.main(argv) == 0                        # finished: every arm is skipped, none refused
    assert capsys.readouterr().err.count("finished, skipped") == 6


# ---- the truth study's arms B0-B3 (issue 25) ----------------------------------------------------
def _x2_teacher(path, *, stage, scale=2, downsample="windowed_area", seed=0):
    """A tiny teacher file as `dsnet pretrain-sr --config sr_tiny_x2` writes it (trained: any
    stage but "untrained")."""
    import torch

    from dsnet_trainer.models import build_model
    from dsnet_trainer.models.teacher import export_teacher
    from dsnet_trainer.sr.config import GeneratorConfig, SRConfig, SRDataConfig

    torch.manual_seed(seed)
    cfg = SRConfig(data=SRDataConfig(scale=scale, downsample=downsample),
                   generator=GeneratorConfig(n_channels=4, n_blocks=1))
    return export_teacher(build_model("srresnet", **cfg.generator_kwargs()), cfg, path, stage=stage,
                          train_patients={"synth": ["T0", "T1", "T2"]})


def test_truth_b_arms_map_to_the_design_configs_and_need_their_teachers(tmp_path):
    from dsnet_trainer.config import load_config
    from dsnet_trainer.seg_config import SegConfig

    mod = _tables_module()
    want = {"B0": ("backbone", 2), "B1": ("drtm", 2), "B2": ("drtm", 2), "B3": ("backbone", 1)}
    assert list(mod.TRUTH_B_ARMS) == list(want)
    for arm, (variant, shrink) in want.items():
        cfg = load_config(SegConfig, "seg_tiny", mod.row_overrides(arm))
        assert (cfg.model.variant, cfg.data.input_shrink, cfg.model.teacher_mode) == (variant, shrink, "upscale")
        assert mod._uses_teacher(arm) == (arm in ("B1", "B2"))
    plan = mod.plan_runs(["unet", "B0", "B1", "dsnet_kats"], 4, 2)
    assert sum(r == "B1" for r, _ in plan) == 4 and sum(r == "dsnet_kats" for r, _ in plan) == 2
    plan = mod.plan_runs(["unet", "A0", "B0", "B1"], 5, 2, 4)       # the design: 5 seeds of A, 4 of B
    assert [sum(r == a for r, _ in plan) for a in ("unet", "A0", "B0", "B1")] == [5, 5, 4, 4]
    with pytest.raises(SystemExit, match="-s data.input_shrink: set by the truth-study arms"):
        mod.check_truth_sets(["B0", "B3"], ["data.input_shrink=1"])
    with pytest.raises(SystemExit, match="-s model.teacher: set by the truth-study arms"):
        mod.check_truth_sets(["B1"], ["model.teacher=x.pt"])
    trained = _x2_teacher(tmp_path / "t2.pt", stage="srgan")
    untrained = _x2_teacher(tmp_path / "t0.pt", stage="untrained")
    files = {"teacher": "", "teacher_x2": str(trained), "teacher_untrained": str(untrained)}
    mod.check_b_teachers(["B0", "B1", "B2", "B3"], files)
    assert mod.row_teacher("B1", files) == str(trained) and mod.row_teacher("B2", files) == str(untrained)
    with pytest.raises(SystemExit, match="arm B1 needs --teacher-x2"):
        mod.check_b_teachers(["B1"], {**files, "teacher_x2": ""})
    with pytest.raises(SystemExit, match="arm B2 needs --teacher-untrained"):
        mod.check_b_teachers(["B2"], {**files, "teacher_untrained": ""})
    mod.check_b_teachers(["B0", "B3"], {"teacher": ""})          # the LR arms need no teacher
    with pytest.raises(SystemExit, match="arm B2 needs an untrained teacher, the file's stage is 'srgan'"):
        mod.check_b_teachers(["B2"], {**files, "teacher_untrained": str(trained)})
    with pytest.raises(SystemExit, match="arm B1 needs a trained teacher"):
        mod.check_b_teachers(["B1"], {**files, "teacher_x2": str(untrained)})
    x4 = _x2_teacher(tmp_path / "t4.pt", stage="srgan", scale=4)
    with pytest.raises(SystemExit, match="--teacher-x2 .*got scale 4, downsample windowed_area"):
        mod.check_b_teachers(["B1"], {**files, "teacher_x2": str(x4)})
    bic = _x2_teacher(tmp_path / "tb.pt", stage="srgan", downsample="bicubic")
    with pytest.raises(SystemExit, match="got scale 2, downsample bicubic"):
        mod.check_b_teachers(["B1"], {**files, "teacher_x2": str(bic)})


def test_truth_b_comparisons_pair_the_design_arms_with_clustered_and_seed_intervals(tmp_path):
    mod = _tables_module()
    rng = np.random.default_rng(11)
    ids = [f"c{i}" for i in range(8)]
    patients = {s: f"P{i // 2}" for i, s in enumerate(ids)}   # 4 background patients of 2 crops
    base = rng.uniform(0.6, 0.8, size=8)
    values, select, runs, names = {}, {}, {}, {}
    for arm, d in {"B0": 0.0, "B1": 0.04, "B2": 0.035, "B3": 0.10}.items():
        for seed in range(4):
            values[f"{arm}-s{seed}"] = base + d + rng.normal(0, 0.002, size=8)
            select.setdefault(arm, []).append(0.90)
    head = "sample_id,gt_px,dice,dice_true_tval,sad_true\n"
    for name, vals in values.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "per_crop.csv").write_text(head + "".join(f"{s},10,0.9,{v},{3 - v}\n" for s, v in zip(ids, vals)))
        runs.setdefault(name[:2], []).append(folder)
        names.setdefault(name[:2], []).append(name)
    comps = {(c["arm"], c["reference"]): c for c in mod.summarise_truth(runs, names, select, patients)["comparisons"]}
    assert list(comps) == [("B1", "B0"), ("B1", "B2"), ("B3", "B0")]
    for (arm, ref), c in comps.items():
        a = np.mean([values[f"{arm}-s{s}"] for s in range(4)], axis=0)
        r = np.mean([values[f"{ref}-s{s}"] for s in range(4)], axis=0)
        per_patient = (a - r).reshape(4, 2).mean(axis=1)           # equal clusters: t on patient means
        crop = stats.t.interval(0.95, 3, loc=per_patient.mean(), scale=stats.sem(per_patient))
        sd = np.array([values[f"{arm}-s{s}"].mean() - values[f"{ref}-s{s}"].mean() for s in range(4)])
        seed = stats.t.interval(0.95, 3, loc=sd.mean(), scale=stats.sem(sd))
        assert c["primary"]["mean"] == pytest.approx((a - r).mean())
        assert c["primary"]["ci95"] == pytest.approx(list(crop))
        assert c["seed_means"]["ci95"] == pytest.approx(list(seed)) and c["seed_means"]["seeds"] == [0, 1, 2, 3]
    # B1 - B0: +4 points, above 0 -> confirmed; B1 - B2: +0.5, interval within +-1 -> refuted; B3 a bound
    assert comps[("B1", "B0")]["verdict"] == "confirmed" and comps[("B1", "B2")]["verdict"] == "refuted"
    assert comps[("B3", "B0")]["verdict"] == "bound (reported)"
    md = mod.format_truth_tables(mod.summarise_truth(runs, names, select, patients))
    assert "| B1 − B2 | decides (b): the trained teacher, not DRTM's capacity |" in md


def test_truth_b_study_trains_its_arms_with_their_own_teachers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = _truth_build(tmp_path / "data", seed=4)
    trained, untrained = _x2_teacher(tmp_path / "t2.pt", stage="srgan"), _x2_teacher(tmp_path / "t0.pt",
                                                                                       stage="untrained", seed=1)
    out = tmp_path / "truth-b"
    argv = ["--data", str(data), "--out", str(out), "--rows", "unet", "--study", "truth-b", "--seeds", "1",
            "--teacher-x2", str(trained), "--teacher-untrained", str(untrained),
            "-s", "optim.epochs=1", "-s", "loop.max_steps_per_epoch=1", "-s", "model.widths=[4,8]",
            "-s", "data.crop_px=32", "-s", "loop.batch_size=2", "--no-verify"]
    mod = _tables_module()
    with pytest.raises(SystemExit, match="arm B1 needs --teacher-x2"):
        mod.main([a for a in argv if a not in ("--teacher-x2", str(trained))])
    monkeypatch.setattr(mod, "COLLAPSE_FLOOR", 0.0)   # one-step toy runs: judge them as real runs
    assert mod.main(argv) == 0
    from dsnet_trainer.models.teacher import read_teacher_file

    for arm, teacher in (("B1", trained), ("B2", untrained)):
        info = json.loads((out / f"{arm}-s0" / "table_run.json").read_text())
        assert info["teacher_weights_sha256"] == read_teacher_file(teacher)["weights_sha256"]
        assert (info["effective"]["model"]["variant"], info["effective"]["data"]["input_shrink"]) == ("drtm", 2)
    truth = json.loads((out / "tables.json").read_text())["truth"]
    assert [(c["arm"], c["reference"]) for c in truth["comparisons"]] == [("B1", "B0"), ("B1", "B2"), ("B3", "B0")]
    per = {}
    for arm in ("B1", "B0"):
        with open(out / f"{arm}-s0" / "eval-test" / "per_crop.csv", newline="") as fh:
            per[arm] = {r["sample_id"]: float(r["dice_true_tval"]) for r in csv.DictReader(fh)}
    diff = np.array([per["B1"][k] - per["B0"][k] for k in sorted(per["B0"])])
    assert truth["comparisons"][0]["primary"]["mean"] == pytest.approx(diff.mean(), abs=1e-6)
    assert "### Truth study arms B" in (out / "TABLES.md").read_text()
    capsys.readouterr()
    # swapping the teachers is refused (a finished run of another teacher)
    swapped = [str(untrained) if a == str(trained) else str(trained) if a == str(untrained) else a for a in argv]
    with pytest.raises(SystemExit, match="needs a trained teacher"):
        mod.main(swapped)
    assert mod.main(argv) == 0
    assert capsys.readouterr().err.count("finished, skipped") == 5
