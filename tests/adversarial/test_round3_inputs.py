"""Adversarial corpus, round 3 (issue 23): YAML alias bombs in recipes and trainer configs,
``crop_px`` values the trainer cannot take, and damaged ``manifest.json``/``SHA256SUMS`` in every
command that reads a built folder: each a one-line error with the documented exit code."""

from __future__ import annotations

import shutil
import time

import pytest
from click.testing import CliRunner

from softmask_builder.errors import InputError
from softmask_builder.exitcodes import EXIT_INPUT, EXIT_VERIFY
from softmask_builder.formats.recipes import load_recipe, recipe_from_dict
from tests.adversarial.kit import assert_one_line_error, build, dl_recipe, invoke

# 9 levels of 9 aliases: ~3.9e8 list items when expanded (the 334-byte recipe bomb).
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


def test_recipe_alias_bomb_is_refused_in_milliseconds(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("dataset: x\nsource: deeplesion\ndescription: " + "\n" + BOMB)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="refused") as info:
        load_recipe(path)
    assert time.perf_counter() - t0 < 1.0
    assert "\n" not in str(info.value)


def test_recursive_alias_in_a_recipe_is_one_line(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("dataset: x\nsource: &s [*s]\n")
    result = invoke("build", "deeplesion", tmp_path, "--recipe", path, "--dry-run")
    assert_one_line_error(result, EXIT_INPUT, "refused")


def test_trainer_config_alias_bomb_is_refused_in_milliseconds(tmp_path):
    from dsnet_trainer.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text(BOMB)
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--data", str(tmp_path), "--out",
                                    str(tmp_path / "run")])
    assert time.perf_counter() - t0 < 5.0
    assert res.exit_code == EXIT_INPUT, res.output
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    assert "refused" in last and str(path) in last
    assert not (tmp_path / "run").exists()


def test_recipe_crop_px_the_trainer_cannot_take_is_refused_naming_the_rule():
    with pytest.raises(InputError, match="multiple of 8"):
        dl_recipe(crop_px=65)
    assert dl_recipe(crop_px=72).crop_px == 72


def test_trainer_config_crop_px_against_the_network_depth():
    from dsnet_trainer.config import ConfigError, from_dict
    from dsnet_trainer.seg_config import SegConfig

    with pytest.raises(ConfigError, match=r"data.crop_px.*multiple of 8"):
        from_dict(SegConfig, {"data": {"crop_px": 65}})
    with pytest.raises(ConfigError, match=r"multiple of 8"):
        from_dict(SegConfig, {"data": {"crop_px": 68}})  # 68 = 4 x 17: halved twice, not 3 times
    assert from_dict(SegConfig, {"data": {"crop_px": 68}, "model": {"widths": [4, 8, 16]}}).data.crop_px == 68


# --- damaged release index ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory, phantom3):
    out = tmp_path_factory.mktemp("r3") / "ds"
    build(recipe_from_dict({"dataset": "adv", "source": "deeplesion", "crop_px": 64,
                            "source_options": {"exclude_noisy": False},
                            "split": {"method": "patient", "seed": 0, "fractions": {"train": 1.0}}}),
          phantom3, out)
    return out


DAMAGE = {
    "manifest-not-json": ("manifest.json", b"{not json", "manifest.json"),
    "manifest-list": ("manifest.json", b"[]", "not a JSON object"),
    "manifest-empty-object": ("manifest.json", b"{}", "'dataset'"),
    "manifest-shards-int": ("manifest.json", b'{"dataset": "adv", "shards": 5}', "'shards'"),
    "sums-binary": ("SHA256SUMS", bytes(range(256)), "SHA256SUMS is damaged"),
    "sums-garbage": ("SHA256SUMS", b"garbage\n", "SHA256SUMS is damaged"),
}
COMMANDS = {
    "verify": lambda d, t: ["verify", d],
    "inspect": lambda d, t: ["inspect", d],
    "report": lambda d, t: ["report", d, "--out", t / "r.html"],
    "preview": lambda d, t: ["preview", d, "--out", t / "p.png"],
    "export-nnunet": lambda d, t: ["export", "nnunet", d, "--dataset-id", "5", "--out", t / "e"],
    "export-monai": lambda d, t: ["export", "monai", d, "--out", t / "e"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_release_index_is_exit_3_and_one_line(damage, command, built, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(built, ds)
    name, data, needle = DAMAGE[damage]
    (ds / name).write_bytes(data)
    result = invoke(*COMMANDS[command](ds, tmp_path))
    assert_one_line_error(result, EXIT_VERIFY, needle)


def test_trainer_dataset_check_damaged_manifest_is_exit_3(built, tmp_path, monkeypatch):
    from dsnet_trainer.dataset_check import DatasetVerifyError, check_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = tmp_path / "ds"
    shutil.copytree(built, ds)
    (ds / "manifest.json").write_text("{}")
    with pytest.raises(DatasetVerifyError, match="not a valid manifest"):
        check_dataset(ds, kind="samples")
