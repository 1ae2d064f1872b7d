"""`softmask phantom --kind hybrid|analytic`: the marker file records what made the sample."""

from __future__ import annotations

import json

from click.testing import CliRunner

from softmask_builder.cli import main
from softmask_builder.phantom.deeplesion_writer import read_truth


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_hybrid_marker_records_shapes_backgrounds_and_licences(tmp_path):
    out = tmp_path / "h"
    result = invoke("phantom", "--out", out, "--n", 3, "--seed", 1)
    assert result.exit_code == 0, result.output
    marker = json.loads((out / "phantom.json").read_text())
    assert marker["kind"] == "hybrid" and marker["n_cases"] + marker["n_rejected"] == 3
    assert "CC BY 3.0" in marker["shapes"]["license"]
    assert marker["backgrounds"]["kind"] == "synthetic"
    truth = read_truth(out / "phantom_truth.npz")
    assert len(truth) == marker["n_cases"]
    assert all(t["shape_id"].startswith("LIDC-IDRI-") for t in truth.values())
    # same options again: reused, not rewritten
    again = invoke("phantom", "--out", out, "--n", 3, "--seed", 1)
    assert json.loads(again.stdout)["reused"] is True


def test_analytic_kind_is_the_old_phantom(tmp_path):
    out = tmp_path / "a"
    result = invoke("phantom", "--out", out, "--n", 2, "--kind", "analytic")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "phantom.json").read_text())["kind"] == "analytic"
    truth = read_truth(out / "phantom_truth.npz")
    assert {t["kind"] for t in truth.values()} <= {"solid", "lobulated", "spiculated", "ground_glass",
                                                    "juxta_pleural", "vessel_attached"}
    assert not any("shape_id" in t for t in truth.values())
