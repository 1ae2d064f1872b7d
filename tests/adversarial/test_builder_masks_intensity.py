"""PNG intensity of plain-mask sources: a 16-bit offset is detected (minimum >= 30000 -> 32768) or
the image is refused with the fix; 8-bit images are refused unless the recipe gives the window
(before: 16-bit images clipped white with hu_offset 0, 8-bit values taken as HU)."""

from __future__ import annotations

import numpy as np
import pytest

from softmask_builder.formats.shards import open_shard
from tests.adversarial.kit import build, masks_recipe, rejects_of, synthetic_ct, write_png16


def _image_hu(out):
    (shard,) = sorted(out.glob("*.h5"))
    with open_shard(shard) as s:
        return {sid: s.sample(i)["image_hu"] for i, sid in enumerate(s.sample_ids)}


def _as_png16(masks_source, name, values):
    (masks_source / f"{name}.npy").unlink()
    write_png16(masks_source / f"{name}.png", values)


def test_deeplesion_style_16bit_offset_is_detected(masks_source, tmp_path):
    reference = build(masks_recipe(), masks_source, tmp_path / "ref")  # the .npy images, in HU
    assert reference.n_samples == 2
    image, _ = synthetic_ct(seed=0)
    _as_png16(masks_source, "case1_a", np.rint(image) + 32768)
    out = tmp_path / "out"
    assert build(masks_recipe(), masks_source, out).n_samples == 2
    # oracle: the same pixels given in HU (npy, rounded as the PNG holds integers)
    np.save(masks_source / "case1_a.npy", np.rint(image))
    (masks_source / "case1_a.png").unlink()
    build(masks_recipe(), masks_source, tmp_path / "npy")
    np.testing.assert_array_equal(_image_hu(out)["case1_a"], _image_hu(tmp_path / "npy")["case1_a"])


def test_16bit_without_a_detectable_offset_is_refused_with_the_fix(masks_source, tmp_path):
    image, _ = synthetic_ct(seed=0)
    _as_png16(masks_source, "case1_a", np.rint(image) + 1024)  # raw CT values: minimum < 30000
    out = tmp_path / "out"
    result = build(masks_recipe(), masks_source, out)
    reason = rejects_of(out)["case1_a"]["reason"]
    assert "hu_offset" in reason and "1024" in reason and result.n_samples == 1
    # the fix the message names works
    assert build(masks_recipe(hu_offset=1024), masks_source, tmp_path / "fixed").n_samples == 2


def test_explicit_zero_offset_on_deeplesion_style_png_is_implausible(masks_source, tmp_path):
    image, _ = synthetic_ct(seed=0)
    _as_png16(masks_source, "case1_a", np.rint(image) + 32768)
    out = tmp_path / "out"
    build(masks_recipe(hu_offset=0), masks_source, out)
    assert "median" in rejects_of(out)["case1_a"]["reason"]


@pytest.mark.parametrize("window", [None, [-600, 1500]])
def test_8bit_needs_the_window(window, masks_source, tmp_path):
    import cv2

    image, _ = synthetic_ct(seed=0)
    level, width = -600, 1500
    img8 = np.clip(np.rint((image - (level - width / 2)) / width * 255), 0, 255).astype(np.uint8)
    (masks_source / "case1_a.npy").unlink()
    assert cv2.imwrite(str(masks_source / "case1_a.png"), img8)
    out = tmp_path / "out"
    options = {} if window is None else {"window_hu": window}
    result = build(masks_recipe(**options), masks_source, out)
    if window is None:
        reason = rejects_of(out)["case1_a"]["reason"]
        assert "8-bit" in reason and "window_hu" in reason and result.n_samples == 1
    else:
        assert result.n_samples == 2 and not rejects_of(out)
        back = _image_hu(out)["case1_a"].astype(np.float64)
        assert back.min() >= level - width / 2 - 1 and back.max() <= level + width / 2 + 1
