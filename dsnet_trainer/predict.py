"""Inference: crops in HU -> Soft Mask and binary mask, from shards or from a folder of crop files.

Inputs (each one crop of the size the model was trained on, ``crop_px`` x ``crop_px``):

* sample shards (``docs/FORMAT.md``): every crop of every shard (or of one split);
* a folder of files, each one 2-D crop in HU:

  - ``.npy``: a (rows, cols) array in HU (a (1, rows, cols) array is accepted);
  - ``.png``: 16-bit greyscale with HU = value - 32768 (the DeepLesion convention). 8-bit or
    colour PNGs carry no HU and are refused;
  - ``.dcm``: a DICOM image; HU = stored value x RescaleSlope + RescaleIntercept.

Outputs (written atomically; same inputs give byte-identical files):

* for shards: ``<shard stem>-pred.h5`` per input shard with ``soft_mask`` float32 (N, H, W) alpha
  in [0, 1], ``prob`` float32 (N, H, W), ``binary_mask`` uint8 (N, H, W) = prob >= threshold,
  ``sample_id`` (S64); root attributes ``checkpoint``, ``variant``, ``threshold``, ``source``;
* for a folder: ``<stem>_softmask.npy`` (float32 alpha), ``<stem>_softmask.png`` (uint16,
  alpha x 65535) and ``<stem>_mask.png`` (uint8, 0 / 255) per input file.

The binary mask uses ``threshold`` (0.5 by default; ``dsnet evaluate`` reports a threshold chosen
on the validation split in ``metrics.json`` -> ``metrics.threshold_val``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from softmask_builder.core import atomic

from .errors import InputError

__all__ = ["CROP_SUFFIXES", "read_crop_hu", "predict_arrays", "predict_dataset", "predict_folder", "predict_shards"]

CROP_SUFFIXES = (".npy", ".png", ".dcm")


def read_crop_hu(path: str | Path) -> np.ndarray:
    """Read one crop file as float32 HU (rows, cols). See the module docstring for the formats.

    Raises
    ------
    InputError : unknown suffix, unreadable file, more than one channel, 8-bit PNG, not 2-D.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise InputError(f"{path}: a crop must be one channel (rows, cols) in HU, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"{path}: dtype {arr.dtype} is not numeric")
        hu = arr.astype(np.float32)
    elif suffix == ".png":
        import cv2

        from softmask_builder.core.image_limits import check_png_size
        from softmask_builder.errors import InputError as _SizeError

        try:
            data = np.fromfile(str(path), dtype=np.uint8)
            check_png_size(data, name=str(path))  # before decoding: a header can claim 60000 x 60000
        except (OSError, _SizeError) as exc:
            raise InputError(str(exc) if isinstance(exc, _SizeError) else f"cannot read {path}: {exc}") from None
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if arr is None:
            raise InputError(f"cannot read {path} as PNG")
        if arr.ndim != 2:
            raise InputError(f"{path}: a crop must be one greyscale channel, got {arr.shape[2]} channels")
        if arr.dtype != np.uint16:
            raise InputError(f"{path}: PNG crops must be 16-bit (HU + 32768, DeepLesion convention); an {arr.dtype} "
                             "PNG carries no HU values")
        hu = arr.astype(np.float32) - 32768.0
    elif suffix == ".dcm":
        import pydicom

        try:
            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for broken files
            raise InputError(f"cannot read {path} as DICOM: {exc}") from exc
        if arr.ndim != 2:
            raise InputError(f"{path}: a crop must be one 2-D DICOM frame, got shape {arr.shape}")
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        hu = (arr.astype(np.float64) * slope + intercept).astype(np.float32)
    else:
        raise InputError(f"{path}: unsupported crop file (use {', '.join(CROP_SUFFIXES)})")
    if not np.all(np.isfinite(hu)):
        raise InputError(f"{path}: the crop holds NaN/inf values")
    return hu


def predict_arrays(net, images_hu: np.ndarray, *, level_hu: float, width_hu: float, batch_size: int = 64,
                   device: str = "cpu", on_batch=None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``net`` on crops in HU, (n, H, W); return ``(prob, alpha)``, float32 (n, H, W) in [0, 1].
    ``on_batch``: called with the batch's crop count after each forward pass (progress).

    Crops are windowed exactly as in training (:func:`dsnet_trainer.data.to_unit_range`).
    """
    import torch

    from .data import to_unit_range

    images_hu = np.asarray(images_hu)
    if images_hu.ndim != 3:
        raise InputError(f"images_hu must be (n, rows, cols), got shape {images_hu.shape}")
    dev = torch.device(device)
    net = net.to(dev).eval()
    probs, alphas = [], []
    with torch.no_grad():
        for start in range(0, len(images_hu), batch_size):
            chunk = np.stack([to_unit_range(x, level_hu=level_hu, width_hu=width_hu)
                              for x in images_hu[start:start + batch_size]])
            prob, soft = net(torch.from_numpy(chunk)[:, None].to(dev))
            probs.append(prob.float().cpu()[:, 0].numpy())
            alphas.append(((soft.float().cpu()[:, 0] + 1.0) / 2.0).clamp(0, 1).numpy())
            if on_batch is not None:
                on_batch(len(chunk))
    if not probs:
        return np.zeros((0,) + images_hu.shape[1:], np.float32), np.zeros((0,) + images_hu.shape[1:], np.float32)
    return np.concatenate(probs).astype(np.float32), np.concatenate(alphas).astype(np.float32)


def predict_dataset(net, dataset, *, batch_size: int = 32, device: str = "cpu", on_batch=None) -> dict[str, Any]:
    """Run ``net`` over every item of a :class:`~dsnet_trainer.data.SampleShardDataset` (no
    augmentation), in order. Returns numpy arrays (n, H, W): ``image`` ([-1, 1]), ``prob``,
    ``soft01`` (predicted alpha), ``gt`` (bool), ``soft_gt01``; and ``sample_id`` (list).
    ``on_batch``: called with the batch's item count after each forward pass (progress)."""
    import torch
    from torch.utils.data import DataLoader, SequentialSampler

    dev = torch.device(device)
    net = net.to(dev).eval()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=SequentialSampler(range(len(dataset))))
    out: dict[str, list] = {k: [] for k in ("image", "prob", "soft01", "gt", "soft_gt01", "sample_id")}
    with torch.no_grad():
        for batch in loader:
            prob, soft = net(batch["image"].to(dev))
            out["image"].append(batch["image"][:, 0].numpy())
            out["prob"].append(prob.float().cpu()[:, 0].numpy())
            out["soft01"].append(((soft.float().cpu()[:, 0] + 1.0) / 2.0).clamp(0, 1).numpy())
            out["gt"].append(batch["binary_mask"][:, 0].numpy() != 0)
            out["soft_gt01"].append(((batch["soft_mask"][:, 0] + 1.0) / 2.0).numpy())
            out["sample_id"].extend(batch["sample_id"])
            if on_batch is not None:
                on_batch(len(batch["sample_id"]))
    arrays = {k: np.concatenate(v) for k, v in out.items() if k != "sample_id"}
    arrays["sample_id"] = out["sample_id"]
    return arrays




def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"--threshold must be in [0, 1], got {threshold}")
    return t


def predict_folder(checkpoint: str | Path, folder: str | Path, out: str | Path, *, threshold: float = 0.5,
                   batch_size: int = 64, device: str = "cpu") -> list[Path]:
    """Predict every ``.npy``/``.png``/``.dcm`` crop directly inside ``folder`` (sorted by name).

    Returns the written paths. Raises :class:`InputError` for an empty folder, an unreadable crop
    or a crop whose size is not the model's ``crop_px`` (the message names the file).
    """
    import cv2

    from .models.loading import load_seg_model
    from .runtime import select_device

    threshold = _check_threshold(threshold)
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--input {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CROP_SUFFIXES)
    if not files:
        raise InputError(f"--input {folder}: no crop files ({', '.join(CROP_SUFFIXES)})")
    net, info = load_seg_model(checkpoint)
    size = (info["crop_px"], info["crop_px"])
    crops = []
    for f in files:
        hu = read_crop_hu(f)
        if hu.shape != size:
            raise InputError(f"{f}: crop is {hu.shape[0]}x{hu.shape[1]} but the model was trained on "
                             f"{size[0]}x{size[1]} crops")
        crops.append(hu)
    from softmask_builder.core.progress import progress

    with progress(len(crops), desc="predict", unit="crop") as bar:
        prob, alpha = predict_arrays(net, np.stack(crops), level_hu=info["level_hu"], width_hu=info["width_hu"],
                                     batch_size=batch_size, device=str(select_device(device, option="--device")),
                                     on_batch=bar.update)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise InputError(f"--input {folder}: several crops share a file stem (e.g. a.npy and a.png)")
    written = []
    for stem, p, a in zip(stems, prob, alpha):
        targets = {
            out / f"{stem}_softmask.npy": None,
            out / f"{stem}_softmask.png": np.round(a * 65535.0).astype(np.uint16),
            out / f"{stem}_mask.png": np.where(p >= threshold, 255, 0).astype(np.uint8),
        }
        for path, img in targets.items():
            with atomic.replacing(path, keep_suffix=True) as tmp:  # cv2 picks the format by suffix
                if img is None:
                    with open(tmp, "wb") as fh:
                        np.save(fh, a.astype(np.float32))
                elif not cv2.imwrite(str(tmp), img):
                    raise InputError(f"cannot write {path}")
            written.append(path)
    bar.close()
    return written


def predict_shards(checkpoint: str | Path, data: str | Path | Sequence[str | Path], out: str | Path, *,
                   split: str | None = None, threshold: float = 0.5, batch_size: int = 64,
                   device: str = "cpu") -> list[Path]:
    """Predict every crop of the sample shards in ``data`` (optionally one ``split``); one
    ``<stem>-pred.h5`` per shard in ``out``. Returns the written paths.

    Raises :class:`~dsnet_trainer.errors.ShardError` for missing/foreign shards or crops of
    another size than the model's.
    """
    import h5py

    from .data import SampleShardDataset, find_shards
    from .models.loading import load_seg_model
    from .runtime import select_device

    threshold = _check_threshold(threshold)
    net, info = load_seg_model(checkpoint)
    dev = str(select_device(device, option="--device"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from softmask_builder.core.progress import progress

    sets = [(shard, SampleShardDataset(shard.path, level_hu=info["level_hu"], width_hu=info["width_hu"],
                                       image_size_px=info["crop_px"], option="--input"))
            for shard in find_shards(data, kind="samples", split=split, option="--input")]
    bar = progress(sum(len(ds) for _, ds in sets), desc="predict", unit="crop")
    for shard, ds in sets:
        res = predict_dataset(net, ds, batch_size=batch_size, device=dev, on_batch=bar.update)
        path = out / f"{shard.path.stem}-pred.h5"
        with atomic.replacing(path, keep_suffix=True) as tmp:
            with h5py.File(tmp, "w", track_order=False) as fh:
                kw: dict[str, Any] = dict(chunks=(1,) + res["prob"].shape[1:], compression="gzip", compression_opts=4,
                                          shuffle=True, track_times=False)
                fh.create_dataset("soft_mask", data=res["soft01"].astype(np.float32), **kw)
                fh.create_dataset("prob", data=res["prob"].astype(np.float32), **kw)
                fh.create_dataset("binary_mask", data=(res["prob"] >= threshold).astype(np.uint8), **kw)
                fh.create_dataset("sample_id", data=np.array([s.encode() for s in res["sample_id"]], dtype="S64"),
                                  track_times=False)
                fh.attrs["checkpoint"] = str(checkpoint)
                fh.attrs["variant"] = info["variant"]
                fh.attrs["threshold"] = threshold
                fh.attrs["source"] = str(shard.path)
        written.append(path)
    bar.close()
    return written
