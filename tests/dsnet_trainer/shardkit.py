"""Test helpers: synthetic CT slices and shards written exactly as docs/FORMAT.md (schema 2 by
default: one dataset per meta field, variable-length UTF-8 strings; ``schema_version=1`` writes
version 1's compound ``meta`` table, so that the trainer's reading of old shards stays tested).

Independent of the builder on purpose: these writers follow the format document, so the
trainer's reader is checked against the spec, not against the code that also writes it.
Other trainer tests (DSNet) may import them: ``from tests.dsnet_trainer.shardkit import ...``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

SAMPLE_META_DTYPE = np.dtype([
    ("sample_id", "S64"), ("source_key", "S256"), ("patient", "S32"), ("split", "S8"),
    ("spacing_mm", "<f4", (2,)), ("origin_px", "<f4", (2,)), ("scale", "<f4"), ("recist_px", "<f4", (4, 2)),
    ("n_readers", "<i2"), ("lesion_type", "<i2"),
])
SLICE_META_DTYPE = np.dtype([
    ("sample_id", "S64"), ("source_key", "S256"), ("patient", "S32"), ("split", "S8"), ("spacing_mm", "<f4", (2,)),
])


def _write_meta(f: h5py.File, meta: np.ndarray, schema_version: int) -> None:
    """Version 1: the compound table ``meta``; any other version: one (N, ...) dataset per field."""
    if schema_version == 1:
        f.create_dataset("meta", data=meta)
        return
    for name in meta.dtype.names:
        if meta.dtype[name].kind == "S":
            f.create_dataset(name, data=[bytes(v).decode() for v in meta[name]], dtype=h5py.string_dtype("utf-8"))
        else:
            f.create_dataset(name, data=meta[name])


def synthetic_ct_slice(rng: np.random.Generator, size_px: int = 128) -> np.ndarray:
    """A chest-CT-like slice in HU (int16): air outside, soft-tissue body, two lungs with
    branching vessels and a few nodules, a spine, blurred by a PSF and with mild noise."""
    r, c = np.mgrid[0:size_px, 0:size_px].astype(np.float64) / size_px
    img = np.full((size_px, size_px), -1000.0)
    body = ((r - 0.5) / 0.42) ** 2 + ((c - 0.5) / 0.47) ** 2 < 1
    img[body] = 40.0
    for cc in (0.3, 0.7):
        lung = ((r - 0.47) / 0.3) ** 2 + ((c - cc) / 0.16) ** 2 < 1
        img[lung] = -850.0
        # vessels: random thin segments inside the lung
        for _ in range(10):
            r0, c0 = 0.47 + rng.uniform(-0.22, 0.22), cc + rng.uniform(-0.1, 0.1)
            ang, length = rng.uniform(0, np.pi), rng.uniform(0.05, 0.2)
            t = np.linspace(0, 1, 200)
            rr = np.clip(((r0 + t * length * np.sin(ang)) * size_px).astype(int), 0, size_px - 1)
            cs = np.clip(((c0 + t * length * np.cos(ang)) * size_px).astype(int), 0, size_px - 1)
            vessel = np.zeros_like(img, dtype=bool)
            vessel[rr, cs] = True
            vessel = ndimage.binary_dilation(vessel, iterations=int(rng.integers(0, 2)))
            img[vessel & lung] = rng.uniform(-100, 60)
        for _ in range(2):
            nr, nc, rad = 0.47 + rng.uniform(-0.15, 0.15), cc + rng.uniform(-0.06, 0.06), rng.uniform(0.015, 0.04)
            nod = (r - nr) ** 2 + (c - nc) ** 2 < rad ** 2
            img[nod & lung] = 20.0
    spine = ((r - 0.8) / 0.06) ** 2 + ((c - 0.5) / 0.06) ** 2 < 1
    img[spine] = 700.0
    img = ndimage.gaussian_filter(img, 0.7)
    img += rng.normal(0, 8.0, img.shape)
    return np.clip(np.round(img), -32768, 32767).astype(np.int16)


def write_slice_shard(path: Path, images_hu: np.ndarray, *, split: str = "train", patients: list[str] | None = None,
                      dataset: str = "synth", schema_version: int = 2, kind: str = "slices") -> Path:
    """A slice shard: image_hu int16 (N, H, W) + meta; root attrs kind/split/schema_version."""
    images_hu = np.asarray(images_hu, dtype=np.int16)
    n = images_hu.shape[0]
    patients = patients or [f"P{i:03d}" for i in range(n)]
    meta = np.zeros(n, dtype=SLICE_META_DTYPE)
    for i in range(n):
        meta[i] = (f"{dataset}-{split}-{i}".encode(), f"slice{i}".encode(), patients[i].encode(), split.encode(),
                   (0.7, 0.7))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        h, w = images_hu.shape[1:]
        f.create_dataset("image_hu", data=images_hu, chunks=(1, h, w), compression="gzip", compression_opts=4,
                         shuffle=True)
        _write_meta(f, meta, schema_version)
        f.attrs.update({"schema_version": schema_version, "kind": kind, "dataset": dataset, "split": split,
                        "n_samples": n, "dataset_version": "test", "builder_version": "test"})
    return path


def make_sample_arrays(rng: np.random.Generator, n: int, size_px: int = 32) -> dict[str, np.ndarray]:
    """n crops with a disc lesion: image_hu, soft_mask (blurred disc), binary_mask, trimap."""
    r, c = np.mgrid[0:size_px, 0:size_px]
    image = np.empty((n, size_px, size_px), np.int16)
    alpha = np.empty((n, size_px, size_px), np.float32)
    binary = np.empty((n, size_px, size_px), np.uint8)
    trimap = np.empty((n, size_px, size_px), np.uint8)
    for i in range(n):
        cr, cc = rng.uniform(0.35, 0.65, 2) * size_px
        rad = rng.uniform(0.15, 0.3) * size_px
        # Asymmetric content (a bright corner) so that flips/rotations are detectable.
        d = np.hypot(r - cr, c - cc)
        binary[i] = d < rad
        alpha[i] = np.clip((rad + 1.5 - d) / 3.0, 0, 1)
        trimap[i] = np.where(d < rad - 2, 255, np.where(d > rad + 2, 0, 128))
        img = -800 + 820 * alpha[i] + rng.normal(0, 10, d.shape)
        img[: size_px // 4, : size_px // 8] = 300
        image[i] = np.round(img)
    return {"image_hu": image, "soft_mask": alpha, "binary_mask": binary, "trimap": trimap}


def write_sample_shard(path: Path, arrays: dict[str, np.ndarray], *, split: str = "train", dataset: str = "synth",
                       schema_version: int = 2, kind: str = "samples", patient_prefix: str = "P") -> Path:
    """A sample shard with the four arrays (and ``true_fraction`` when ``arrays`` has it), meta, and
    the root attributes of FORMAT.md."""
    n, h, w = arrays["image_hu"].shape
    meta = np.zeros(n, dtype=SAMPLE_META_DTYPE)
    for i in range(n):
        meta[i] = (f"{dataset}-{split}-{i}".encode(), f"src{i}".encode(), f"{patient_prefix}{i % 3}".encode(),
                   split.encode(), (0.7, 0.7), (10.0, 12.0), 1.0, np.full((4, 2), np.nan, np.float32), -1, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, dtype in (("image_hu", np.int16), ("soft_mask", np.float32), ("binary_mask", np.uint8),
                            ("trimap", np.uint8), ("true_fraction", np.float32)):
            if name not in arrays:  # true_fraction: optional (schema 3, phantom sources)
                continue
            f.create_dataset(name, data=np.asarray(arrays[name], dtype=dtype), chunks=(1, h, w), compression="gzip",
                             compression_opts=4, shuffle=True)
        _write_meta(f, meta, schema_version)
        f.attrs.update({"schema_version": schema_version, "kind": kind, "dataset": dataset, "split": split,
                        "n_samples": n, "dataset_version": "test", "builder_version": "test",
                        "recipe_json": "{}", "recipe_sha256": "0" * 64})
    return path


def write_synthetic_slices(folder: Path, *, n_train: int = 6, n_val: int = 2, size_px: int = 96,
                           seed: int = 0) -> Path:
    """Train and val slice shards of synthetic CT (different patients) in ``folder``."""
    rng = np.random.default_rng(seed)
    train = np.stack([synthetic_ct_slice(rng, size_px) for _ in range(n_train)])
    val = np.stack([synthetic_ct_slice(rng, size_px) for _ in range(n_val)])
    write_slice_shard(folder / "synth-slices-train-00000-of-00001.h5", train, split="train",
                      patients=[f"T{i:03d}" for i in range(n_train)])
    write_slice_shard(folder / "synth-slices-val-00000-of-00001.h5", val, split="val",
                      patients=[f"V{i:03d}" for i in range(n_val)])
    return folder
