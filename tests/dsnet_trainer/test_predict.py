"""Inference from shards and from crop files (npy / 16-bit PNG / DICOM), and bad crops."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

from dsnet_trainer.data import SampleShardDataset
from dsnet_trainer.errors import InputError, ShardError
from dsnet_trainer.predict import predict_folder, predict_shards, read_crop_hu

from .seg_helpers import trained_run, write_sample_shard


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("predrun"), variant="dsnet")


def _write_dicom(path, stored: np.ndarray, *, slope: float, intercept: float):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["h7", str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.astype(np.int16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_read_crop_formats(tmp_path):
    hu = np.arange(-512, 512, dtype=np.int16).reshape(32, 32)
    np.save(tmp_path / "a.npy", hu)
    np.save(tmp_path / "b.npy", hu[None].astype(np.float32))
    cv2.imwrite(str(tmp_path / "c.png"), (hu.astype(np.int32) + 32768).astype(np.uint16))
    _write_dicom(tmp_path / "d.dcm", (hu + 1024) // 2, slope=2.0, intercept=-1024.0)
    for name in ("a.npy", "b.npy", "c.png"):
        np.testing.assert_array_equal(read_crop_hu(tmp_path / name), hu.astype(np.float32))
    np.testing.assert_array_equal(read_crop_hu(tmp_path / "d.dcm"), (((hu + 1024) // 2) * 2 - 1024).astype(np.float32))


def test_bad_crop_files_are_named(tmp_path):
    cv2.imwrite(str(tmp_path / "eight.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((8, 8, 3), np.uint16))
    np.save(tmp_path / "two.npy", np.zeros((2, 8, 8)))
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="eight.png: PNG crops must be 16-bit"):
        read_crop_hu(tmp_path / "eight.png")
    with pytest.raises(InputError, match="rgb.png: a crop must be one greyscale channel"):
        read_crop_hu(tmp_path / "rgb.png")
    with pytest.raises(InputError, match=r"two.npy: a crop must be one channel .* \(2, 8, 8\)"):
        read_crop_hu(tmp_path / "two.npy")
    with pytest.raises(InputError, match="unsupported crop file"):
        read_crop_hu(tmp_path / "x.jpg")


def test_shards_and_files_give_the_same_masks(run, tmp_path):
    data, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    written = predict_shards(ckpt, data, tmp_path / "s1", split="test", threshold=0.4)
    again = predict_shards(ckpt, data, tmp_path / "s2", split="test", threshold=0.4)
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in again]
    with h5py.File(written[0], "r") as fh:
        soft, prob, mask = fh["soft_mask"][:], fh["prob"][:], fh["binary_mask"][:]
        ids = [s.decode() for s in fh["sample_id"][:]]
        assert fh.attrs["threshold"] == 0.4
    np.testing.assert_array_equal(mask, (prob >= 0.4).astype(np.uint8))
    assert soft.min() >= 0 and soft.max() <= 1
    # the same crops as .npy files in HU, through the folder path
    ds = SampleShardDataset(data, split="test")
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(len(ds)):
        s, j = ds.reader.locate(i)
        np.save(crops / f"{ids[i]}.npy", ds.reader.read(s, j, "image_hu"))
    predict_folder(ckpt, crops, tmp_path / "f", threshold=0.4)
    for i, sid in enumerate(ids):
        np.testing.assert_allclose(np.load(tmp_path / "f" / f"{sid}_softmask.npy"), soft[i], atol=1e-6)
        png = cv2.imread(str(tmp_path / "f" / f"{sid}_mask.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, mask[i] * 255)
        png16 = cv2.imread(str(tmp_path / "f" / f"{sid}_softmask.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_allclose(png16 / 65535.0, soft[i], atol=1 / 65535)


def test_wrong_crop_size_and_threshold(run, tmp_path):
    _, _, run_dir = run
    ckpt = run_dir / "checkpoints" / "best.pt"
    folder = tmp_path / "crops"
    folder.mkdir()
    np.save(folder / "big.npy", np.zeros((48, 48), np.int16))
    with pytest.raises(InputError, match=r"big.npy: crop is 48x48 but the model was trained on 32x32"):
        predict_folder(ckpt, folder, tmp_path / "o")
    write_sample_shard(tmp_path / "big-test-00000-of-00001.h5", split="test", n=2, crop_px=48)
    with pytest.raises(ShardError, match="48x48 crops but the model expects 32x32"):
        predict_shards(ckpt, tmp_path / "big-test-00000-of-00001.h5", tmp_path / "o")
    with pytest.raises(InputError, match="--threshold"):
        predict_folder(ckpt, folder, tmp_path / "o", threshold=2.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no crop files"):
        predict_folder(ckpt, tmp_path / "empty", tmp_path / "o")
