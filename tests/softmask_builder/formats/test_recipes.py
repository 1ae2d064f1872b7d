"""Recipes: typed loading from YAML, validation that names the key, bundled recipes, and the
options dataclasses kept in step with the adapters' plan signatures."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json

import pytest
import yaml

from softmask_builder.errors import InputError
from softmask_builder.labelling.pipeline import LabelParams
from softmask_builder.formats.recipes import (MANIFESTS_DIR, SOURCES, Recipe, load_recipe, recipe_from_dict,
                                      resolve_recipe_path)

BUNDLED = sorted(p.stem for p in MANIFESTS_DIR.glob("*.yaml"))

# Keyword arguments of a plan function that the build sets itself or leaves at its default.
_SET_BY_BUILD = {"crop_px", "limit", "check_images", "unselected", "crop_zrc"}


def _minimal(**extra):
    return {"dataset": "toy", "source": "masks", **extra}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_recipes_load_and_match_their_yaml(name):
    raw = yaml.safe_load((MANIFESTS_DIR / f"{name}.yaml").read_text())
    recipe = load_recipe(name)
    as_dict = recipe.to_dict()
    # Every key written in the YAML comes back with the same value through the typed recipe.
    for key, value in raw.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                got = as_dict[key][sub]
                assert got == (list(subvalue) if isinstance(subvalue, tuple) else subvalue), (key, sub)
        else:
            assert as_dict[key] == value, key
    assert recipe_from_dict(as_dict) == recipe


def test_bundled_set_covers_the_documented_recipes():
    assert {"lnsm", "lidc", "sample"} <= set(BUNDLED)
    lnsm = load_recipe("lnsm")
    raw = yaml.safe_load((MANIFESTS_DIR / "lnsm.yaml").read_text())
    assert lnsm.split.counts == raw["split"]["counts"]
    assert lnsm.source == "deeplesion" and lnsm.split.method == "patient"


@pytest.mark.parametrize("mapping, where", [
    (_minimal(crop=64), "crop"),
    (_minimal(label={"band": 2}), "label.band"),
    (_minimal(split={"method": "patient", "count": {"train": 1}}), "split.count"),
    (_minimal(source_options={"spacing": 0.7}), "source_options.spacing"),
    ({"dataset": "toy", "source": "deeplesion", "source_options": {"lesion_type": [5]}}, "source_options.lesion_type"),
])
def test_unknown_key_is_an_error_naming_it(mapping, where):
    with pytest.raises(InputError) as info:
        recipe_from_dict(mapping)
    assert where in str(info.value)
    assert "unknown key" in str(info.value)


@pytest.mark.parametrize("mapping, where", [
    (_minimal(crop_px="64"), "crop_px"),
    (_minimal(samples_per_shard=True), "samples_per_shard"),
    (_minimal(label={"eps": "small"}), "label.eps"),
    ({"dataset": "toy", "source": "deeplesion", "source_options": {"long_axis_mm": [3.0]}},
     "source_options.long_axis_mm"),
    ({"dataset": "toy", "source": "deeplesion", "source_options": {"exclude_noisy": "yes"}},
     "source_options.exclude_noisy"),
    ({"dataset": "toy", "source": "lidc", "source_options": {"slices": "middle"}}, "source_options.slices"),
])
def test_wrong_type_is_an_error_naming_the_key(mapping, where):
    with pytest.raises(InputError, match=where.replace(".", r"\.")):
        recipe_from_dict(mapping)


@pytest.mark.parametrize("mapping, text", [
    ({"source": "masks"}, "dataset"),
    (_minimal(dataset="Bad-Name"), "dataset"),
    (_minimal(source="dicomdir"), "source"),
    (_minimal(split={"method": "patient", "counts": {"train": 1}, "fractions": {"train": 1.0}}), "exactly one"),
    (_minimal(split={"method": "patient", "fractions": {"train": 0.5, "val": 0.2}}), "sum to 1"),
    (_minimal(split={"method": "patient", "counts": {"training": 5}}), "training"),
    (_minimal(split={"method": "official", "counts": {"train": 5}}), "official"),
    (_minimal(crop_px=4), "crop_px"),
])
def test_invalid_values_are_rejected(mapping, text):
    with pytest.raises(InputError, match=text):
        recipe_from_dict(mapping)


def test_types_are_coerced_to_the_dataclass_fields():
    recipe = recipe_from_dict({"dataset": "toy", "source": "deeplesion",
                               "source_options": {"lesion_types": [5], "long_axis_mm": [3, 30]},
                               "label": {"band_px": 3, "eps": 1e-6}})
    assert recipe.source_options.lesion_types == (5,)
    assert recipe.source_options.long_axis_mm == (3.0, 30.0)
    assert isinstance(recipe.label.band_px, float) and recipe.label == LabelParams(band_px=3.0, eps=1e-6)
    masks = recipe_from_dict(_minimal(source_options={"spacing_mm": 0.5}))
    assert masks.source_options.spacing_mm == 0.5
    masks = recipe_from_dict(_minimal(source_options={"spacing_mm": [0.5, 0.6]}))
    assert masks.source_options.spacing_mm == (0.5, 0.6)


def test_canonical_json_and_hash_follow_every_parameter():
    base = recipe_from_dict(_minimal())
    same = recipe_from_dict(json.loads(base.to_json()))
    assert same.to_json() == base.to_json() and same.sha256() == base.sha256()
    changed = recipe_from_dict(_minimal(label={"band_px": 2.5}))
    assert changed.sha256() != base.sha256()
    stored = json.loads(changed.to_json())
    assert stored["label"] == json.loads(changed.label.to_json())
    assert stored["label"]["band_px"] == 2.5


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_options_match_the_adapter_plan_signature(source):
    """Every option is a keyword of the adapter's plan function, and every keyword the build does
    not set itself is an option (so a new adapter parameter cannot be silently unreachable)."""
    spec = SOURCES[source]
    plan = getattr(importlib.import_module(spec.module), spec.plan)
    params = inspect.signature(plan).parameters
    keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    fields = {f.name for f in dataclasses.fields(spec.options)}
    assert fields <= keywords, fields - keywords
    assert keywords - _SET_BY_BUILD <= fields, keywords - _SET_BY_BUILD - fields
    for f in dataclasses.fields(spec.options):  # same defaults as the adapter
        assert f.default == params[f.name].default, f.name


def test_resolve_names_and_paths(tmp_path):
    assert resolve_recipe_path("lnsm") == MANIFESTS_DIR / "lnsm.yaml"
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: mine\nsource: masks\n")
    assert load_recipe(path) == Recipe(dataset="mine", source="masks")
    with pytest.raises(InputError, match="lnsm"):  # the message lists the bundled names
        resolve_recipe_path("no_such_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_recipe(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("dataset: w\nsource: masks\nlabel:\n  bandpx: 2\n")
    with pytest.raises(InputError, match=r"wrong\.yaml.*label\.bandpx"):
        load_recipe(wrong)


# --- volume recipes (issue 26) ------------------------------------------------------------------

def test_volume_recipe_section_and_2d_json_unchanged():
    from softmask_builder.labelling.pipeline3d import ISOTROPIC_DEFAULT

    r = load_recipe("lidc3d")
    assert r.kind == "volumes" and r.source == "lidc_volumes"
    assert r.volume.crop_zrc == (48, 96, 96) and r.volume.isotropic is ISOTROPIC_DEFAULT
    data = json.loads(r.to_json())
    assert data["volume"] == {"crop_zrc": [48, 96, 96], "isotropic": ISOTROPIC_DEFAULT} and "crop_px" not in data
    assert recipe_from_dict(data) == r  # the stored JSON reads back to the same recipe
    # a 2-D recipe has neither a volume section nor a changed canonical JSON
    lidc = load_recipe("lidc")
    assert lidc.volume is None and "volume" not in json.loads(lidc.to_json())


@pytest.mark.parametrize("extra, match", [
    ({"source": "lidc", "volume": {"crop_zrc": [48, 96, 96]}}, "volume applies only"),
    ({"crop_px": 32}, "crop_px does not apply"),
    ({"volume": {"crop_zrc": [48, 96]}}, "crop_zrc"),
    ({"volume": {"crop_zrc": [4, 96, 96]}}, "crop_zrc"),
    ({"volume": {"isotropic": "yes please"}}, "isotropic"),
])
def test_volume_recipe_errors_name_the_key(extra, match):
    data = {"dataset": "v", "source": "lidc_volumes", **extra}
    with pytest.raises(InputError, match=match):
        recipe_from_dict(data)
