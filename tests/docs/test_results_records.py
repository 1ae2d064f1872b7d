"""The committed training records (docs/results/*/tables.json from `scripts/run_tables.py
--record`) rebuild exactly from their per-run files, and every table row the README quotes from a
record is in that record's TABLES.md (a README sentence about the trainer claims only what a
committed table shows)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDS = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/tables.json"))


def _rebuild_in_copy(mod, record: Path, copy: Path, argv: list[str], capsys) -> dict:
    """Run `run_tables.py argv` (whose `--record` is `copy`) on a copy of `record`, so the committed
    files are never rewritten; the copy's TABLES.md must be the committed one byte for byte. Returns
    the rebuilt tables.json."""
    shutil.copytree(record, copy)
    assert mod.main(argv) == 0
    capsys.readouterr()
    assert (copy / "TABLES.md").read_text() == (record / "TABLES.md").read_text(), record.name
    return json.loads((copy / "tables.json").read_text())


def _tables_module():
    spec = importlib.util.spec_from_file_location("run_tables", ROOT / "scripts" / "run_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("record", RECORDS, ids=[p.name for p in RECORDS])
def test_record_rebuilds_its_tables(record, tmp_path, capsys):
    mod = _tables_module()
    saved = json.loads((record / "tables.json").read_text())
    # the canonical order of a `--rows ... --study l1` call (the tables list rows in call order)
    canon = [*mod.TABLE_III, *mod.TABLE_IV, *mod.TABLE_V, *mod.L1_STUDY]
    rows = [r for r in canon if r in saved["rows"]]
    label = saved.get("nnunet_label", "nnunet_2d")   # records before the label was saved: the default
    rows += sorted(r for r in saved["rows"] if r not in canon and r != label)
    nnunet = sorted(p.parent for p in record.glob("nnunet*/metrics.json"))
    argv = ["--data", str(tmp_path / "unused"), "--out", str(tmp_path / "out"), "--record", str(tmp_path / "rec"),
            "--rows", ",".join(rows), "--seeds", "9", "--extra-seeds", "9", "--no-train",
            *[x for s in saved["sets"] for x in ("-s", s)], *[x for n in nnunet for x in ("--nnunet", str(n))],
            *(["--nnunet-label", label] if nnunet else [])]
    rebuilt = _rebuild_in_copy(mod, record, tmp_path / "rec", argv, capsys)
    assert set(rebuilt["rows"]) == set(saved["rows"])
    for row, entry in saved["rows"].items():
        for key, value in entry.items():
            if isinstance(value, float):
                assert rebuilt["rows"][row][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (row, key)


def test_readme_table_rows_come_from_a_record():
    # The README's measurement tables moved to docs/RESULTS.md (issue 24); both are checked.
    readme = "\n".join((ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "docs/RESULTS.md"))
    quoted = [m for m in re.finditer(r"docs/results/([\w.-]+)/TABLES\.md", readme)]
    assert quoted, "neither the README nor docs/RESULTS.md cites a training record"
    for m in quoted:
        record = ROOT / "docs" / "results" / m.group(1)
        table = (record / "TABLES.md").read_text(encoding="utf-8")
        # the rows of the first table after the citation
        after = readme[m.end():].split("\n")
        lines, started = [], False
        for line in after:
            if line.startswith("| ") and not line.startswith("| row |") and not line.startswith("|---"):
                started = True
                lines.append(line)
            elif started and not line.startswith("|"):
                break
        assert lines, f"no table follows the citation of {m.group(0)}"
        for line in lines:
            assert line in table, f"README row not in {m.group(0)}: {line}"


def _make_truth_tables_commands():
    """The `run_tables.py` calls `make truth-tables` would run, split into argv lists."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    printed = subprocess.run(["make", "--no-print-directory", "-n", "truth-tables", "STAMP="], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    commands = []
    for line in printed.replace("\\\n", " ").splitlines():
        argv = shlex.split(line)
        if len(argv) > 1 and argv[1] == "scripts/run_tables.py":
            commands.append(argv[2:])
    return commands


def test_make_truth_tables_rebuilds_both_truth_records_exactly(tmp_path, capsys):
    """`make truth-tables` (the README's one command for the truth study's tables) names every run and
    setting of both records: run with a copy of each record, it writes the committed TABLES.md."""
    mod = _tables_module()
    commands = _make_truth_tables_commands()
    records = {argv[argv.index("--record") + 1] for argv in commands}
    assert records == {"docs/results/truth1", "docs/results/truth2"}
    for argv in commands:
        record = ROOT / argv[argv.index("--record") + 1]
        copy = tmp_path / record.name
        argv = [a.replace(str(record.relative_to(ROOT)), str(copy)) for a in argv]   # --record, --nnunet
        argv[argv.index("--out") + 1] = str(tmp_path / ("out-" + record.name))
        argv[argv.index("--data") + 1] = str(tmp_path / "no-build")      # the records alone suffice
        rebuilt = _rebuild_in_copy(mod, record, copy, argv, capsys)
        saved = json.loads((record / "tables.json").read_text())
        assert set(rebuilt["rows"]) == set(saved["rows"]), record.name
        assert rebuilt.get("truth") is not None, f"{record.name}: no truth table rebuilt"
