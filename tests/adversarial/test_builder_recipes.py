"""Recipes are validated on load, every value: a bad value fails ``--dry-run`` with a one-line
error naming the key (before this, band_px -2, eps -1, window width 0 or radius 1000 loaded, then
rejected every sample at label time), and a key given twice is an error."""

from __future__ import annotations

import pytest

from softmask_builder.errors import InputError
from softmask_builder.exitcodes import EXIT_INPUT
from softmask_builder.formats.recipes import MANIFESTS_DIR, load_recipe
from tests.adversarial.kit import assert_one_line_error, invoke

BASE = """dataset: adv
source: deeplesion
crop_px: {crop_px}
split: {{method: patient, seed: 0, fractions: {{train: 1.0}}}}
label:
  {key}: {value}
"""

BAD_LABEL = [
    ("band_px", "-2", "label.band_px"),
    ("band_px", ".nan", "label.band_px"),
    ("band_px", "40", "label.band_px"),
    ("eps", "-1", "label.eps"),
    ("eps", "0", "label.eps"),
    ("eps", "1e30", "label.eps"),
    ("window_width_hu", "0", "label.window_width_hu"),
    ("window_width_hu", "-400", "label.window_width_hu"),
    ("window_level_hu", "1e9", "label.window_level_hu"),
    ("radius", "1000", "label.radius"),
    ("radius", "0", "label.radius"),
    ("grabcut_iterations", "0", "label.grabcut_iterations"),
    ("consensus", "0", "label.consensus"),
    ("consensus", "1.5", "label.consensus"),
]


def _write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("key, value, named", BAD_LABEL)
def test_bad_label_value_fails_on_load_and_in_dry_run(key, value, named, tmp_path, dl_source):
    path = _write(tmp_path, BASE.format(crop_px=64, key=key, value=value))
    with pytest.raises(InputError, match=named.replace(".", r"\.")):
        load_recipe(path)
    result = invoke("build", "deeplesion", dl_source, "--recipe", path, "--dry-run")
    assert_one_line_error(result, EXIT_INPUT, named)


def test_the_same_values_inside_their_range_load(tmp_path):
    # The oracle for the cases above: moving each value into range makes the recipe load.
    for key, value in [("band_px", "0"), ("eps", "1e-6"), ("window_width_hu", "1"), ("radius", "10"),
                       ("consensus", "1")]:
        recipe = load_recipe(_write(tmp_path, BASE.format(crop_px=64, key=key, value=value)))
        assert float(getattr(recipe.label, key)) == float(value)


@pytest.mark.parametrize("crop_px, key, value, named", [
    (16, "radius", "8", "label.radius"),      # a 17x17 window in a 16x16 crop
    (16, "band_px", "8", "label.band_px"),    # the band covers the whole crop
])
def test_label_values_must_fit_the_crop(crop_px, key, value, named, tmp_path):
    with pytest.raises(InputError, match=named.replace(".", r"\.")):
        load_recipe(_write(tmp_path, BASE.format(crop_px=crop_px, key=key, value=value)))


@pytest.mark.parametrize("text, needle", [
    ("dataset: adv\nsource: deeplesion\ndataset: other\n", "duplicate key 'dataset'"),
    ("dataset: adv\nsource: deeplesion\nlabel:\n  eps: 1.0e-3\n  eps: 0.5\n", "duplicate key 'eps'"),
    ("dataset: adv\nsource: deeplesion\nsplit: {method: patient, fractions: {train: 0.5, train: 0.5}}\n",
     "duplicate key 'train'"),
])
def test_duplicate_yaml_keys_are_errors(text, needle, tmp_path, dl_source):
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=needle):
        load_recipe(path)
    assert_one_line_error(invoke("build", "deeplesion", dl_source, "--recipe", path, "--dry-run"), EXIT_INPUT,
                          needle, "line")


@pytest.mark.parametrize("text, needle", [
    ("dataset: adv\nsource: deeplesion\nsamples_per_shard: 0\n", "samples_per_shard"),
    ("dataset: adv\nsource: deeplesion\ncrop_px: 100000\n", "crop_px"),
    ("dataset: adv\nsource: deeplesion\nlabel: {band_px: [1, 2]}\n", "label.band_px"),
])
def test_other_out_of_range_values(text, needle, tmp_path):
    with pytest.raises(InputError, match=needle):
        load_recipe(_write(tmp_path, text))


def test_bundled_recipes_still_load():
    names = sorted(p.stem for p in MANIFESTS_DIR.glob("*.yaml"))
    assert names
    for name in names:
        assert load_recipe(name).dataset
