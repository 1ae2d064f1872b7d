"""FORMAT.md, the README and the dataset card say the same thing, per source, about what
``binary_mask`` holds, and that is what the code does (checked on a synthetic case)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from softmask_builder.dataset import release
from softmask_builder.labelling.pipeline import LabelParams, label_from_mask, label_from_readers, label_from_recist

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("deeplesion", "lidc", "masks")


def classify(text: str) -> str:
    """One meaning per phrase: 'alpha>=0.5', 'consensus' or 'given'; anything else fails."""
    t = text.lower()
    found = set()
    if "thresholded at 0.5" in t or "binarized soft mask" in t or "α ≥ 0.5" in t:
        found.add("alpha>=0.5")
    if "consensus" in t:
        found.add("consensus")
    if "given mask" in t:
        found.add("given")
    if "grabcut" in t and "only seeds" not in t:
        found.add("grabcut")
    assert len(found) == 1, f"ambiguous or unknown binary_mask meaning {sorted(found)}: {text!r}"
    return found.pop()


def _table_rows(markdown: str, header_cell: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and header_cell in line)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def format_md_meanings() -> dict[str, str]:
    rows = _table_rows((ROOT / "docs" / "FORMAT.md").read_text(), "| `binary_mask` |")
    keys = {"deeplesion": "deeplesion", "lidc-idri": "lidc", "masks": "masks"}
    out = {}
    for first, meaning in rows:
        key = keys[first.split()[0].lower()]
        out[key] = classify(meaning)
    return out


def readme_meanings() -> dict[str, str]:
    rows = _table_rows((ROOT / "README.md").read_text(), "| binary ground truth |")
    keys = {"binary mask": "masks", "several readers": "lidc", "RECIST": "deeplesion"}
    out = {}
    for row in rows:
        key = next(v for k, v in keys.items() if row[0].startswith(k))
        out[key] = classify(row[-1])
    return out


def card_meanings() -> dict[str, str]:
    out = {}
    for source in SOURCES:
        text = release.how_labels_were_made(source, 64, LabelParams().__dict__)
        out[source] = classify(text.split("`binary_mask` is ", 1)[1])
    return out


@pytest.fixture(scope="module")
def code_meanings() -> dict[str, str]:
    """What the pipeline does, found by comparing its binary mask with each candidate."""
    from softmask_builder.phantom.cases import generate_case
    from softmask_builder.labelling.trimap import consensus_mask

    case = generate_case(0, kind="lobulated", diameter_mm=12.0, shape=(128, 128))
    params = LabelParams()
    out = {}
    rec = label_from_recist(case.image_hu, case.recist, params)
    assert np.array_equal(rec.binary_mask, rec.soft_mask >= 0.5)
    out["deeplesion"] = "alpha>=0.5"
    rng = np.random.default_rng(0)
    readers = [np.roll(case.true_mask, int(s), axis=1) for s in rng.integers(-2, 3, size=4)]
    lid = label_from_readers(case.image_hu, readers, params)
    assert np.array_equal(lid.binary_mask, consensus_mask(np.stack(readers), level=0.5))
    assert not np.array_equal(lid.binary_mask, lid.soft_mask >= 0.5)
    out["lidc"] = "consensus"
    msk = label_from_mask(case.image_hu, case.true_mask, params)
    assert np.array_equal(msk.binary_mask, case.true_mask)
    out["masks"] = "given"
    return out


@pytest.mark.parametrize("doc", ["format_md", "readme", "card"])
def test_docs_agree_with_the_code_on_binary_mask(doc, code_meanings):
    meanings = {"format_md": format_md_meanings, "readme": readme_meanings, "card": card_meanings}[doc]()
    assert meanings == code_meanings


def test_classifier_rejects_the_old_grabcut_wording():
    with pytest.raises(AssertionError):
        classify("ground-truth binary mask {0, 1} (the Soft Mask's source: GrabCut / consensus / given mask)")
