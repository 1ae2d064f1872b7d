"""Three-orthogonal-slice previews of volume samples.

Oracles: the planes sliced by hand with the documented flips; hand-computed centroids; a rendered
volume whose three central planes carry three distinct grey levels, read back from the PNG's pixels
inside each panel; panel boxes against the physical extent (Z * z_mm by W * col_mm ...); a volume
shard written with the arrays the previews must show.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from softmask_builder.errors import InputError
from softmask_builder.formats.shards import encode_meta, shard_name, write_shard
from softmask_builder.reports.figures import png_bytes
from softmask_builder.reports.preview3d import (nodule_center_zrc, orthogonal_planes, preview_volume_png,
                                                volume_preview_figure, volume_preview_report, write_volume_previews)

SHAPE = (12, 30, 26)            # (z, row, col): unequal, so a swapped axis shows
SPACING = (2.5, 0.7, 0.6)


def _decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def _ball(shape=SHAPE, center=(6, 15, 13), radius_mm=4.0, spacing=SPACING):
    zz, rr, cc = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    d = np.sqrt(((zz - center[0]) * spacing[0]) ** 2 + ((rr - center[1]) * spacing[1]) ** 2
                + ((cc - center[2]) * spacing[2]) ** 2)
    soft = np.clip(radius_mm - d + 0.5, 0.0, 1.0).astype(np.float32)
    return soft


def test_planes_are_the_hand_sliced_ones_with_their_spacing():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=SHAPE)
    other = rng.random(SHAPE)
    planes = orthogonal_planes({"a": vol, "b": other}, SPACING, center_zrc=(4, 17, 9))
    assert [p.name for p in planes] == ["axial", "coronal", "sagittal"]
    axial, coronal, sagittal = planes
    np.testing.assert_array_equal(axial.arrays["a"], vol[4])
    np.testing.assert_array_equal(coronal.arrays["a"], np.flipud(vol[:, 17, :]))    # superior up
    np.testing.assert_array_equal(sagittal.arrays["b"], np.flipud(other[:, :, 9]))
    assert (axial.axis, axial.index, coronal.index, sagittal.index) == (0, 4, 17, 9)
    assert axial.spacing_mm == (0.7, 0.6) and coronal.spacing_mm == (2.5, 0.6) and sagittal.spacing_mm == (2.5, 0.7)
    assert coronal.extent_mm == pytest.approx((12 * 2.5, 26 * 0.6))
    assert axial.sides == ("A", "P", "R", "L") and sagittal.sides == ("S", "I", "A", "P")
    with pytest.raises(InputError, match="outside the volume"):
        orthogonal_planes({"a": vol}, SPACING, center_zrc=(12, 0, 0))
    with pytest.raises(InputError, match="one shape"):
        orthogonal_planes({"a": vol, "b": other[:, :, :-1]}, SPACING, center_zrc=(0, 0, 0))
    with pytest.raises(InputError, match="spacing_mm"):
        orthogonal_planes({"a": vol}, (1.0, 0.0, 1.0), center_zrc=(0, 0, 0))


def test_center_is_the_component_nearest_the_crop_centre():
    mask = np.zeros(SHAPE, bool)
    mask[5:8, 13:16, 12:14] = True        # near the centre (5.5, 14.5, 12.5): centroid (6, 14, 12.5)
    mask[0:2, 0:4, 0:3] = True            # a second lesion in a corner, larger
    mask[0:2, 20:30, 20:26] = True
    assert nodule_center_zrc(mask, spacing_mm=SPACING) == (6, 14, 13)   # 12.5 rounds half up
    # empty binary mask: alpha >= 0.5 used instead
    soft = np.zeros(SHAPE, np.float32)
    soft[2, 3, 4] = 0.7
    soft[2, 3, 5] = 0.4
    assert nodule_center_zrc(np.zeros(SHAPE, bool), soft, spacing_mm=SPACING) == (2, 3, 4)
    # nothing at all: the crop's centre (5.5, 14.5, 12.5) rounded half up
    assert nodule_center_zrc(np.zeros(SHAPE, bool), np.zeros(SHAPE), spacing_mm=SPACING) == (6, 15, 13)


def _panel_boxes(fig, img_shape):
    """(y0, y1, x0, x1) pixel boxes of the three image axes in the saved PNG."""
    fig.canvas.draw()
    height = img_shape[0]
    boxes = []
    for ax in fig.axes[:3]:
        b = ax.get_window_extent()
        boxes.append((int(round(height - b.y1)), int(round(height - b.y0)), int(round(b.x0)), int(round(b.x1))))
    return boxes


def test_the_three_panels_show_the_three_central_planes_at_their_physical_aspect():
    # Distinct grey per plane through (7, 11, 19): axial plane -500 HU, coronal 0, sagittal +500,
    # elsewhere -1000; window level 0, width 2000 -> 0.25, 0.5, 0.75, 0 of the grey range.
    center = (7, 11, 19)
    image = np.full(SHAPE, -1000.0, np.float32)
    image[center[0], :, :] = -500.0
    image[:, center[1], :] = 0.0
    image[:, :, center[2]] = 500.0
    image[1, :, :] = -250.0                 # slice z = 1 (inferior): grey 0.375 in the coronal and sagittal panels
    empty = np.zeros(SHAPE, np.float32)
    fig = volume_preview_figure(image, empty, empty, SPACING, window_hu=(0.0, 2000.0), center_zrc=center)
    png = png_bytes(fig)
    img = _decode(png)
    assert img.shape[0] == round(fig.get_figheight() * fig.dpi) and img.shape[1] == round(fig.get_figwidth() * fig.dpi)
    boxes = _panel_boxes(fig, img.shape)
    medians = []
    for y0, y1, x0, x1 in boxes:
        inner = img[y0 + 3:y1 - 3, x0 + 3:x1 - 3]
        medians.append(float(np.median(inner)))
    assert medians == pytest.approx([0.25 * 255, 0.5 * 255, 0.75 * 255], abs=3)
    # physical aspect: panel height / width = (H*row, Z*z, Z*z) / (W*col, W*col, H*row) in mm
    expected = [SHAPE[1] * 0.7 / (SHAPE[2] * 0.6), SHAPE[0] * 2.5 / (SHAPE[2] * 0.6), SHAPE[0] * 2.5 / (SHAPE[1] * 0.7)]
    got = [(y1 - y0) / (x1 - x0) for y0, y1, x0, x1 in boxes]
    assert got == pytest.approx(expected, rel=0.03)
    # positions: in the axial panel the coronal plane's row (11 of 30, grey 128) and the sagittal
    # plane's column (19 of 26, grey 191); in the coronal panel slice z = 1 (grey 96, marked below)
    # drawn near the bottom (superior up: display row 12 - 1 - 1 = 10 of 12)

    def where(panel, value, axis):
        y0, y1, x0, x1 = panel
        hits = np.abs(img[y0 + 1:y1 - 1, x0 + 1:x1 - 1].astype(int) - value) <= 3
        profile = hits.mean(axis=axis)
        found = np.flatnonzero(profile > 0.5)
        return (found.mean() + 1.5) / ((y1 - y0) if axis == 1 else (x1 - x0))

    assert where(boxes[0], 128, axis=1) == pytest.approx(11.5 / 30, abs=0.02)
    assert where(boxes[0], 191, axis=0) == pytest.approx(19.5 / 26, abs=0.02)
    assert where(boxes[1], 191, axis=0) == pytest.approx(19.5 / 26, abs=0.02)
    assert where(boxes[1], 96, axis=1) == pytest.approx(10.5 / 12, abs=0.02)
    assert where(boxes[2], 96, axis=1) == pytest.approx(10.5 / 12, abs=0.02)


def test_png_decodes_is_deterministic_and_draws_contours():
    soft = _ball()
    image = (-800 + 900 * soft).astype(np.float32)
    binary = soft >= 0.5
    readers = np.stack([_ball(radius_mm=3.5) >= 0.5, binary, _ball(radius_mm=4.5) >= 0.5])
    png = preview_volume_png(image, soft, binary, SPACING, reader_masks=readers, true_fraction=soft, title="s1")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png == preview_volume_png(image, soft, binary, SPACING, reader_masks=readers, true_fraction=soft,
                                     title="s1")
    plain = preview_volume_png(image, soft, binary, SPACING, title="s1")
    no_contour = preview_volume_png(image, np.zeros_like(soft), np.zeros_like(binary), SPACING,
                                    center_zrc=nodule_center_zrc(binary, spacing_mm=SPACING), title="s1")
    # the red Soft Mask contour is there: colour pixels (R >> G) in the plain picture, none without masks
    red = [int(((lambda a: (a[..., 2].astype(int) - a[..., 1]) > 120)(cv2.imdecode(np.frombuffer(p, np.uint8),
                                                                                   cv2.IMREAD_COLOR))).sum())
           for p in (plain, no_contour)]
    assert red[0] > 50 and red[1] < red[0] / 5   # the legend's red line stays in both
    with pytest.raises(InputError, match="reader_masks"):
        preview_volume_png(image, soft, binary, SPACING, reader_masks=binary)
    with pytest.raises(InputError, match="window_hu"):
        preview_volume_png(image, soft, binary, SPACING, window_hu=(0.0, 0.0))


ATTRS = {"dataset": "toy3d", "dataset_version": "1.0", "builder_version": "0.1.0", "split": "train",
         "recipe_json": '{"source": "nifti"}', "recipe_sha256": "0" * 64, "n_planned": 3, "plan_sha256": "1" * 64,
         "rejects_json": "[]"}


def _volume_shard(path, n=3):
    z, h, w = SHAPE
    soft = np.stack([_ball(center=(5 + i, 14, 12)) for i in range(n)])
    trimap = np.where(soft >= 1, 255, np.where(soft > 0, 128, 0)).astype(np.uint8)
    arrays = {"image_hu": (-800 + 900 * soft).astype(np.int16), "soft_mask": soft,
              "binary_mask": (soft >= 0.5).astype(np.uint8), "trimap": trimap}
    rows = [{"sample_id": f"case/{i}", "source_key": f"c{i}.nii.gz#n01", "patient": f"c{i}", "split": "train",
             "spacing_mm": SPACING, "origin_px": (0.0, 0.0, 0.0), "scale": (1.0, 1.0, 1.0), "n_readers": -1,
             "lesion_type": -1} for i in range(n)]
    write_shard(path, arrays=arrays, meta=encode_meta(rows, kind="volumes"), attrs=ATTRS, kind="volumes")
    return arrays


def test_write_volume_previews_of_a_build_folder(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    arrays = _volume_shard(build / shard_name("toy3d", "train", 0, 1, kind="volumes"))
    report = write_volume_previews(build, tmp_path / "previews", n=2)
    assert report["sample_ids"] == ["case/0", "case/2"] and report["n"] == 2 and report["n_available"] == 3
    assert [p.rsplit("/", 1)[1] for p in report["previews"]] == ["case_0.png", "case_2.png"]
    # each file is the preview of the arrays written (float32 spacing 0.7 / 0.6 read back as stored)
    spacing = tuple(float(np.float32(s)) for s in SPACING)
    for path, i in zip(report["previews"], (0, 2)):
        expected = preview_volume_png(arrays["image_hu"][i], arrays["soft_mask"][i], arrays["binary_mask"][i],
                                      spacing, title=f"case/{i} [train]")
        assert (tmp_path / "previews" / path.rsplit("/", 1)[1]).read_bytes() == expected
    with pytest.raises(InputError, match="n must be an int >= 1"):
        write_volume_previews(build, tmp_path / "p2", n=0)


def test_volume_contact_sheet_has_one_row_per_sample(tmp_path):
    shard = tmp_path / shard_name("toy3d", "train", 0, 1, kind="volumes")
    _volume_shard(shard)
    one = volume_preview_report(shard, tmp_path / "one.png", n=1)
    three = volume_preview_report(shard, tmp_path / "three.png", n=5)
    assert one == {"preview": str(tmp_path / "one.png"), "n_requested": 1, "n": 1, "n_available": 3,
                   "sample_ids": ["case/0"]}
    assert three["n"] == 3 and three["sample_ids"] == ["case/0", "case/1", "case/2"]
    png1, png3 = (tmp_path / "one.png").read_bytes(), (tmp_path / "three.png").read_bytes()
    h1, h3 = _decode(png1).shape[0], _decode(png3).shape[0]
    row = h1 - 0.6 * 110            # one row and the legend's share of the height (0.6 in at 110 dpi)
    assert h3 == pytest.approx(3 * row + 0.6 * 110, abs=3)
    volume_preview_report(shard, tmp_path / "again.png", n=5)
    assert (tmp_path / "again.png").read_bytes() == png3


def test_write_volume_previews_refuses_a_2d_build(tmp_path):
    rng = np.random.default_rng(0)
    alpha = np.zeros((1, 16, 16), np.float32)
    alpha[0, 4:12, 4:12] = 1.0
    trimap = (alpha * 255).astype(np.uint8)
    arrays = {"image_hu": rng.integers(-1000, 400, (1, 16, 16)).astype(np.int16), "soft_mask": alpha,
              "binary_mask": (alpha >= 0.5).astype(np.uint8), "trimap": trimap}
    rows = [{"sample_id": "s0", "source_key": "k", "patient": "p", "split": "train", "spacing_mm": (0.7, 0.7),
             "origin_px": (0.0, 0.0), "scale": 1.0, "n_readers": -1, "lesion_type": -1}]
    path = tmp_path / shard_name("toy", "train", 0, 1)
    write_shard(path, arrays=arrays, meta=encode_meta(rows), attrs={**ATTRS, "dataset": "toy"})
    with pytest.raises(InputError, match="is a 'samples' shard: three-plane previews are for volume builds"):
        write_volume_previews(path, tmp_path / "out")
    with pytest.raises(InputError, match="is a 'samples' shard"):
        volume_preview_report(path, tmp_path / "out.png")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.png").exists()
