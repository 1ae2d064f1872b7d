"""Helpers of the adversarial corpus (``tests/adversarial/``): recipes for 1-3-sample builds, an
in-process build at one job, CSV readers and the one-line-error assertion. Fixtures are in
``conftest.py``; import helpers with ``from tests.adversarial.kit import ...``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from softmask_builder.dataset.build import build_dataset
from softmask_builder.cli import main
from softmask_builder.formats.recipes import recipe_from_dict


def dl_recipe(**over):
    """A DeepLesion-source recipe for 1-3-sample builds: everything to train, no filter."""
    data = {"dataset": "adv", "source": "deeplesion", "crop_px": 64, "samples_per_shard": 16,
            "source_options": {"exclude_noisy": False},
            "split": {"method": "patient", "seed": 0, "fractions": {"train": 1.0}}}
    data.update(over)
    return recipe_from_dict(data)


def build(recipe, source, out, **kw):
    """In-process build at one job (no joblib backend configured: jobs run sequentially)."""
    return build_dataset(recipe, source, out, **kw)


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def rejects_of(out: Path) -> dict[str, dict]:
    """rejects.csv as sample_id -> row."""
    return {r["sample_id"]: r for r in read_csv_rows(Path(out) / "rejects.csv")}


def dl_rows(root: Path) -> list[dict]:
    return read_csv_rows(Path(root) / "DL_info.csv")


def write_dl_rows(root: Path, rows: list[dict]) -> None:
    with open(Path(root) / "DL_info.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def key_png(root: Path, row: dict) -> Path:
    series, key = row["File_name"].rsplit("_", 1)
    return Path(root) / "Images_png" / series / key


def write_png16(path: Path, values: np.ndarray) -> None:
    assert cv2.imwrite(str(path), np.asarray(values, dtype=np.uint16))


def invoke(*args):
    """Run the ``softmask`` CLI in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and exactly one error line on stderr (no traceback; lines
    ``warning: ...`` aside) that holds every ``needle``; returns that line."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def synthetic_ct(shape=(96, 96), *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image_hu float32, mask bool): lung-like noisy background (-800 HU) with a soft-tissue
    disk (+40 HU) in the middle, the disk as the mask."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    mask = (rr - shape[0] / 2) ** 2 + (cc - shape[1] / 2) ** 2 <= (min(shape) / 6) ** 2
    image = np.where(mask, 40.0, -800.0) + rng.normal(0, 30, shape)
    return image.astype(np.float32), mask


def masks_recipe(**options):
    return recipe_from_dict({"dataset": "advm", "source": "masks", "crop_px": 64,
                             "source_options": {"spacing_mm": 0.8, **options},
                             "split": {"method": "patient", "seed": 0, "fractions": {"train": 1.0}}})


def manifest_of(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def slices_recipe(**over):
    data = {"dataset": "advs", "source": "deeplesion_slices", "samples_per_shard": 16,
            "split": {"method": "patient", "seed": 0, "fractions": {"train": 1.0}}}
    data.update(over)
    return recipe_from_dict(data)


def final_files(out: Path) -> list[str]:
    """Names under ``out`` that are not hidden temporaries."""
    return sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))
