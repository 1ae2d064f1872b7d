"""Adversarial corpus, round 3 (issue 23), the sample boundary: one hostile file never stops a
build (it becomes a rejects row naming the sample, the stage and the cause), decoders check a
PNG's declared size before decoding, and crops never invent label pixels."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from softmask_builder.formats.shards import open_shard
from softmask_builder.labelling.crop import crop_image, crop_plan
from tests.adversarial.kit import build, dl_recipe, dl_rows, key_png, masks_recipe, rejects_of, synthetic_ct


def png_bomb(rows: int = 60000, cols: int = 60000) -> bytes:
    """A few hundred bytes of 16-bit greyscale PNG whose header claims ``rows`` x ``cols``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", cols, rows, 16, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 2 * cols) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_bomb_in_deeplesion_is_a_reject_and_the_rest_builds(dl_source, tmp_path):
    row = dl_rows(dl_source)[0]
    key_png(dl_source, row).write_bytes(png_bomb())
    out = tmp_path / "out"
    t0 = time.perf_counter()
    result = build(dl_recipe(), dl_source, out)
    assert time.perf_counter() - t0 < 60
    assert result.n_samples == 2  # the other two cases built
    (rej,) = rejects_of(out).values()
    assert rej["stage"] == "load" and "60000 x 60000" in rej["reason"] and "\n" not in rej["reason"]


def test_png_bomb_as_a_mask_is_a_reject(masks_source, tmp_path):
    (masks_source / "case1_a_mask.png").write_bytes(png_bomb())
    out = tmp_path / "out"
    result = build(masks_recipe(), masks_source, out)
    assert result.n_samples == 1
    assert "60000 x 60000" in rejects_of(out)["case1_a"]["reason"]


def test_png_bomb_in_dsnet_predict_is_a_one_line_input_error(tmp_path):
    from dsnet_trainer.errors import InputError
    from dsnet_trainer.predict import read_crop_hu

    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb())
    with pytest.raises(InputError, match="60000 x 60000") as info:
        read_crop_hu(path)
    assert "\n" not in str(info.value)
    ok = tmp_path / "ok.png"
    assert cv2.imwrite(str(ok), np.full((64, 64), 32768 - 800, np.uint16))
    assert read_crop_hu(ok)[0, 0] == -800.0  # a normal PNG still reads


def test_an_unexpected_exception_type_is_a_reject_naming_it(dl_source, tmp_path, monkeypatch):
    import softmask_builder.sources.deeplesion as dl

    real = dl.crop_plan

    def flaky(center_rc, **kw):  # a library's corner case: an exception type no guard listed
        if flaky.calls == 0:
            flaky.calls += 1
            raise KeyError("corner case")
        return real(center_rc, **kw)

    flaky.calls = 0
    monkeypatch.setattr(dl, "crop_plan", flaky)
    out = tmp_path / "out"
    result = build(dl_recipe(), dl_source, out)
    assert result.n_samples == 2
    (rej,) = rejects_of(out).values()
    assert rej["stage"] == "load" and rej["reason"] == "KeyError: 'corner case'"


# --- crops never invent label pixels ---------------------------------------------------------
SIDES = {"top": (0, 40), "bottom": (88, 40), "left": (40, 0), "right": (40, 88),
         "top-left": (0, 0), "top-right": (0, 88), "bottom-left": (88, 0), "bottom-right": (88, 88)}


@pytest.mark.parametrize("where", sorted(SIDES))
@pytest.mark.parametrize("extent", [10.0, 200.0])  # scale 1 and a down-scaled crop
def test_crop_of_a_border_mask_adds_no_pixel(where, extent):
    mask = np.zeros((96, 96), np.uint8)
    r0, c0 = SIDES[where]
    mask[r0:r0 + 8, c0:c0 + 8] = 1
    origin, scale = crop_plan((r0 + 3.5, c0 + 3.5), size_px=32, extent_px=extent)
    crop = crop_image(mask, origin, scale, size_px=32, interpolation=cv2.INTER_NEAREST, outside="zero")
    # Oracle: crop pixel (r, c) shows source (origin + (r, c) / scale); outside the image it must be 0.
    rr, cc = np.mgrid[:32, :32]
    src_r, src_c = origin[0] + rr / scale, origin[1] + cc / scale
    outside = (src_r < -0.5) | (src_r > 95.5) | (src_c < -0.5) | (src_c > 95.5)
    assert outside.any()  # the window does reach beyond the image
    assert not crop[outside].any()
    if scale == 1.0:  # exact: the crop holds the 64 mask pixels, no more
        assert int(crop.sum()) == 64


@pytest.mark.parametrize("where", sorted(SIDES))
def test_masks_source_border_mask_keeps_its_pixel_count(where, tmp_path):
    root = tmp_path / "masks"
    root.mkdir()
    image, _ = synthetic_ct(seed=0)
    mask = np.zeros((96, 96), np.uint8)
    r0, c0 = SIDES[where]
    mask[r0:r0 + 8, c0:c0 + 8] = 255
    image = np.where(mask > 0, 40.0, image).astype(np.float32)
    np.save(root / "case1_a.npy", image)
    assert cv2.imwrite(str(root / "case1_a_mask.png"), mask)
    out = tmp_path / "out"
    assert build(masks_recipe(), root, out).n_samples == 1
    (shard,) = sorted(out.glob("*.h5"))
    with open_shard(shard) as s:
        binary = s.sample(0)["binary_mask"]
    assert int(binary.sum()) == 64  # the given mask, not its edge-replicated growth


def test_png_bomb_as_a_zip_member_is_refused_before_decoding(tmp_path):
    import zipfile

    from softmask_builder.errors import SoftMaskError
    from softmask_builder.sources.deeplesion import read_key_slice_hu

    archive = tmp_path / "Images_png_01.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Images_png/000001_01_01/064.png", png_bomb())
    payload = {"image_zip": str(archive), "image_member": "Images_png/000001_01_01/064.png"}
    with pytest.raises(SoftMaskError, match=r"Images_png_01.zip:Images_png/000001_01_01/064.png: PNG header "
                                            r"declares 60000 x 60000"):
        read_key_slice_hu(payload, sample_id="s")
