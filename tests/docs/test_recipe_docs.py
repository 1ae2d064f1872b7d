"""Every recipe quoted in the docs (a ```yaml block with a ``dataset:`` key) loads and equals the
shipped recipe of the same name, description aside (issue 24): copying a documented recipe must
not silently change the labels. The comparison is between two independent files, each read by
the production loader."""

from __future__ import annotations

import re

import pytest

from softmask_builder.formats.recipes import load_recipe
from tests.docs.doc_commands import DOC_FILES, ROOT


def documented_recipes() -> list[tuple[str, str]]:
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"```yaml\n(.*?)```", text, flags=re.S):
            if re.search(r"^dataset:", m.group(1), flags=re.M):
                out.append((f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


RECIPES = documented_recipes()


def test_the_docs_quote_a_recipe():
    assert RECIPES


@pytest.mark.parametrize("where, text", RECIPES, ids=[w for w, _ in RECIPES])
def test_documented_recipe_equals_the_shipped_one(where, text, tmp_path):
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    doc = load_recipe(path).to_dict()
    shipped_path = ROOT / "manifests" / f"{doc['dataset']}.yaml"
    assert shipped_path.is_file(), f"{where}: no manifests/{doc['dataset']}.yaml to compare with"
    shipped = load_recipe(shipped_path).to_dict()
    doc.pop("description", None)
    shipped.pop("description", None)
    assert doc == shipped, f"{where} differs from {shipped_path.name}"
