"""Three-orthogonal-slice previews of 3-D Soft Masks (volume shards, issue 26).

One picture per volume sample: the axial, coronal and sagittal planes through the nodule's centre,
side by side, each drawn in millimetres (so a 2.5 mm slice is 2.5 mm tall on screen: the physical
aspect comes from ``spacing_mm``), the CT windowed in grey, with the contours of

* the Soft Mask at alpha = 0.5 (solid red, as in the 2-D previews of :mod:`.figures`),
* the binary mask -- the given mask, or the readers' 50 % consensus -- (dashed yellow),
* each reader's mask when given (thin dotted, one colour per reader),
* the true partial-volume fraction at 0.5 when the sample carries one (a phantom; dash-dot green).

Display convention (radiological, as a CT viewer shows it), the arrays being (z, row, col) =
towards (Superior, Posterior, patient's Left) as every volume record and shard stores them:

=========  =================  ==========================  =============================
panel      plane              up  /  down                 left  /  right
=========  =================  ==========================  =============================
axial      z = k              anterior / posterior (row)  patient right / left (col)
coronal    row = r            superior / inferior (z)     patient right / left (col)
sagittal   col = c            superior / inferior (z)     anterior / posterior (row)
=========  =================  ==========================  =============================

The centre (:func:`nodule_center_zrc`) is the rounded centroid, in voxels, of the 26-connected
component of the binary mask nearest the crop's centre in mm (the crop is centred on its nodule;
another lesion that enters the crop is not the one shown); without a binary voxel the Soft Mask's
alpha >= 0.5 is used the same way, and without either the crop's centre.

:func:`orthogonal_planes` (pure: picks the planes and orients them) is kept apart from the drawing;
:func:`preview_volume_png` draws one sample; for a volume build folder, :func:`write_volume_previews`
writes one PNG per sample and :func:`volume_preview_report` one contact sheet (a row per sample),
both reading the build only through :mod:`softmask_builder.formats.shards` (via :mod:`.figures`).
Volume shards store no reader masks, so build previews show the binary (consensus) mask only. PNG
bytes are identical run to run (Agg canvas, no metadata).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from softmask_builder.core import atomic
from softmask_builder.errors import InputError, SourceError
from softmask_builder.formats.shards import open_shard
from softmask_builder.reports.figures import (CONTOUR_COLOR, DEFAULT_WINDOW_HU, SampleRef, new_figure, png_bytes,
                                              read_samples, recipe_window_hu, shard_paths, windowed)

__all__ = ["Plane", "PLANE_NAMES", "nodule_center_zrc", "orthogonal_planes", "volume_preview_figure",
           "preview_volume_png", "write_volume_previews", "volume_preview_report"]

PLANE_NAMES = ("axial", "coronal", "sagittal")
BINARY_COLOR = "#ffd60a"                     # binary / consensus mask (yellow, dashed)
TRUTH_COLOR = "#34c759"                      # true fraction 0.5 (green, dash-dot)
# one per reader, none of them red, yellow or green (the lines above) nor white (invisible on a light legend)
READER_COLORS = ("#5ac8fa", "#af52de", "#ff9500", "#00c7be", "#007aff", "#ff2d95", "#a2845e", "#8e8e93")
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Plane:
    """One displayed plane.

    name : "axial", "coronal" or "sagittal".
    axis : the volume axis normal to the plane (0 = z, 1 = row, 2 = col).
    index : the plane's voxel index along ``axis``.
    n_planes : the volume's size along ``axis``.
    arrays : name -> 2-D array in display orientation (row 0 drawn at the top), every input volume
        sliced the same way.
    spacing_mm : (vertical_mm, horizontal_mm) of one displayed pixel.
    sides : the patient directions at the (top, bottom, left, right) edges, e.g. ("A", "P", "R", "L").
    """

    name: str
    axis: int
    index: int
    n_planes: int
    arrays: dict[str, np.ndarray]
    spacing_mm: tuple[float, float]
    sides: tuple[str, str, str, str]

    @property
    def extent_mm(self) -> tuple[float, float]:
        """(height_mm, width_mm) of the displayed plane."""
        shape = next(iter(self.arrays.values())).shape
        return shape[0] * self.spacing_mm[0], shape[1] * self.spacing_mm[1]


def _check_spacing(spacing_mm) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing_mm must be three positive numbers (z_mm, row_mm, col_mm), got {spacing_mm!r}")
    return values  # type: ignore[return-value]


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def nodule_center_zrc(binary_mask, soft_mask=None, *, spacing_mm) -> tuple[int, int, int]:
    """The voxel (z, row, col) the three planes go through (module docstring).

    Parameters
    ----------
    binary_mask : (Z, H, W) bool-like
    soft_mask : (Z, H, W) float or None
        Used (alpha >= 0.5) only when ``binary_mask`` is empty.
    spacing_mm : (z_mm, row_mm, col_mm)
        Distances to the crop centre are measured in mm.

    Returns
    -------
    (z, row, col) ints inside the volume: the rounded (half up) centroid of the chosen component;
    ties in distance go to the component numbered first (raster order).
    """
    spacing = np.asarray(_check_spacing(spacing_mm))
    mask = np.asarray(binary_mask) != 0
    if mask.ndim != 3 or mask.size == 0:
        raise InputError(f"binary_mask must be a non-empty 3-D (Z, H, W) array, got shape {mask.shape}")
    if not mask.any() and soft_mask is not None:
        soft = np.asarray(soft_mask, dtype=np.float64)
        if soft.shape != mask.shape:
            raise InputError(f"soft_mask shape {soft.shape} differs from binary_mask shape {mask.shape}")
        mask = soft >= 0.5
    centre = (np.asarray(mask.shape, dtype=np.float64) - 1) / 2.0
    if not mask.any():
        return tuple(_round_half_up(c) for c in centre)  # type: ignore[return-value]
    labels, n = ndimage.label(mask, structure=_CONNECTIVITY)
    centroids = np.atleast_2d(np.asarray(ndimage.center_of_mass(mask, labels, range(1, n + 1)), dtype=np.float64))
    distance = np.linalg.norm((centroids - centre) * spacing, axis=1)
    best = centroids[int(np.argmin(distance))]
    return tuple(int(np.clip(_round_half_up(c), 0, s - 1)) for c, s in zip(best, mask.shape))  # type: ignore


def orthogonal_planes(volumes: Mapping[str, np.ndarray], spacing_mm, *, center_zrc) -> list[Plane]:
    """The axial, coronal and sagittal planes through ``center_zrc``, oriented for display.

    Parameters
    ----------
    volumes : name -> (Z, H, W) array
        All of the same shape (e.g. ``image_hu``, ``soft_mask``, ``binary_mask``), in (z, row, col)
        = (Superior, Posterior, Left) order.
    spacing_mm : (z_mm, row_mm, col_mm)
    center_zrc : three ints inside the volume

    Returns
    -------
    list of three :class:`Plane`, in :data:`PLANE_NAMES` order:

    * axial ``v[k, :, :]`` (rows down = posterior, cols right = patient's left), spacing (row, col);
    * coronal ``v[::-1, r, :]`` (superior up), spacing (z, col);
    * sagittal ``v[::-1, :, c]`` (superior up, anterior left), spacing (z, row).

    Raises
    ------
    InputError
        No volume, volumes of different shapes or not 3-D, a centre outside the volume.
    """
    if not volumes:
        raise InputError("volumes must name at least one (Z, H, W) array")
    arrays = {name: np.asarray(v) for name, v in volumes.items()}
    shapes = {v.shape for v in arrays.values()}
    shape = next(iter(shapes))
    if len(shapes) != 1 or len(shape) != 3 or min(shape) < 1:
        raise InputError(f"volumes must be 3-D (Z, H, W) arrays of one shape, got "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    z_mm, row_mm, col_mm = _check_spacing(spacing_mm)
    try:
        k, r, c = (int(v) for v in center_zrc)
    except (TypeError, ValueError):
        raise InputError(f"center_zrc must be three ints (z, row, col), got {center_zrc!r}") from None
    if not all(0 <= i < n for i, n in zip((k, r, c), shape)):
        raise InputError(f"center_zrc {(k, r, c)} lies outside the volume of shape {shape}")
    return [
        Plane("axial", 0, k, shape[0], {n: v[k, :, :] for n, v in arrays.items()}, (row_mm, col_mm),
              ("A", "P", "R", "L")),
        Plane("coronal", 1, r, shape[1], {n: v[::-1, r, :] for n, v in arrays.items()}, (z_mm, col_mm),
              ("S", "I", "R", "L")),
        Plane("sagittal", 2, c, shape[2], {n: v[::-1, :, c] for n, v in arrays.items()}, (z_mm, row_mm),
              ("S", "I", "A", "P")),
    ]


def _contour(ax, field: np.ndarray, extent, *, color: str, style: str, width: float) -> None:
    # A level outside the data makes matplotlib warn (an error under the test suite): skip it.
    field = np.asarray(field, dtype=np.float32)
    if field.min() < 0.5 <= field.max():
        ax.contour(field, levels=[0.5], colors=[color], linestyles=[style], linewidths=[width], extent=extent,
                   origin="upper")


def _prepare(image_hu, soft_mask, binary_mask, spacing_mm, reader_masks, true_fraction, window_hu, center_zrc):
    """Checked inputs -> (planes, spacing, (level, width), n_readers, has_truth)."""
    spacing = _check_spacing(spacing_mm)
    volumes: dict[str, np.ndarray] = {"image_hu": np.asarray(image_hu, dtype=np.float32),
                                      "soft_mask": np.asarray(soft_mask, dtype=np.float32),
                                      "binary_mask": (np.asarray(binary_mask) != 0).astype(np.float32)}
    n_readers = 0
    if reader_masks is not None:
        readers = np.asarray(reader_masks)
        if readers.ndim != 4:
            raise InputError(f"reader_masks must be (R, Z, H, W), got shape {readers.shape}")
        n_readers = readers.shape[0]
        for j, m in enumerate(readers):
            volumes[f"reader_{j}"] = (m != 0).astype(np.float32)
    if true_fraction is not None:
        volumes["true_fraction"] = np.asarray(true_fraction, dtype=np.float32)
    try:
        level, width = (float(v) for v in window_hu)
    except (TypeError, ValueError):
        raise InputError(f"window_hu must be (level_hu, width_hu), got {window_hu!r}") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise InputError(f"window_hu must be finite with width > 0, got {window_hu!r}")
    if center_zrc is None:
        center_zrc = nodule_center_zrc(volumes["binary_mask"], volumes["soft_mask"], spacing_mm=spacing)
    planes = orthogonal_planes(volumes, spacing, center_zrc=center_zrc)
    return planes, spacing, (level, width), n_readers, true_fraction is not None


def _height_in(planes, width_in: float) -> float:
    """Height (inches) of a row of the three panels drawn ``width_in`` wide at one mm scale."""
    return max(p.extent_mm[0] for p in planes) * width_in / sum(p.extent_mm[1] for p in planes)


def _draw_row(container, planes, *, window, n_readers: int, has_truth: bool, head: str) -> None:
    """The three panels on ``container`` (a Figure or SubFigure), titled ``head``."""
    level, width = window
    axes = container.subplots(1, 3, width_ratios=[p.extent_mm[1] for p in planes])
    for ax, plane in zip(axes, planes):
        h_mm, w_mm = plane.extent_mm
        extent = (0.0, w_mm, h_mm, 0.0)
        ax.imshow(windowed(plane.arrays["image_hu"], level, width), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest", extent=extent, aspect="equal")
        for j in range(n_readers):
            _contour(ax, plane.arrays[f"reader_{j}"], extent, color=READER_COLORS[j % len(READER_COLORS)],
                     style="dotted", width=0.8)
        if has_truth:
            _contour(ax, plane.arrays["true_fraction"], extent, color=TRUTH_COLOR, style="dashdot", width=1.0)
        _contour(ax, plane.arrays["binary_mask"], extent, color=BINARY_COLOR, style="dashed", width=1.0)
        _contour(ax, plane.arrays["soft_mask"], extent, color=CONTOUR_COLOR, style="solid", width=1.3)
        ax.set_xlim(0.0, w_mm)
        ax.set_ylim(h_mm, 0.0)
        ax.set_title(f"{plane.name}  {'zrc'[plane.axis]} = {plane.index} of {plane.n_planes}", fontsize=8)
        ax.set_xlabel("mm", fontsize=7, labelpad=1)
        ax.tick_params(labelsize=6, length=2)
        top, bottom, left, right = plane.sides
        style = dict(color="white", fontsize=7, fontweight="bold", transform=ax.transAxes,
                     bbox=dict(facecolor="black", alpha=0.55, pad=1.0, linewidth=0))
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    container.suptitle(head, fontsize=8)


def _legend(fig, *, n_readers: int, has_truth: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=CONTOUR_COLOR, label="Soft Mask alpha = 0.5"),
               Line2D([], [], color=BINARY_COLOR, linestyle="dashed",
                      label="readers' 50 % consensus" if n_readers else "binary mask")]
    handles += [Line2D([], [], color=READER_COLORS[j % len(READER_COLORS)], linestyle="dotted",
                       label=f"reader {j + 1}") for j in range(n_readers)]
    if has_truth:
        handles.append(Line2D([], [], color=TRUTH_COLOR, linestyle="dashdot", label="true fraction = 0.5"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=7, frameon=False)


def _head(title, spacing, window) -> str:
    z_mm, row_mm, col_mm = spacing
    return (f"{title + ' - ' if title else ''}voxel {z_mm:.3g} x {row_mm:.3g} x {col_mm:.3g} mm (z, row, col); "
            f"window {window[0]:g} / {window[1]:g} HU")


#: Width (inches) of the three panels of one sample.
_ROW_WIDTH_IN = 7.5


def volume_preview_figure(image_hu, soft_mask, binary_mask, spacing_mm, *, reader_masks=None, true_fraction=None,
                          window_hu=DEFAULT_WINDOW_HU, center_zrc=None, title: str | None = None):
    """The matplotlib figure of :func:`preview_volume_png` (same arguments); its three image axes
    are ``fig.axes[:3]`` in :data:`PLANE_NAMES` order."""
    planes, spacing, window, n_readers, has_truth = _prepare(image_hu, soft_mask, binary_mask, spacing_mm,
                                                             reader_masks, true_fraction, window_hu, center_zrc)
    fig = new_figure(_ROW_WIDTH_IN + 0.6, _height_in(planes, _ROW_WIDTH_IN) + 1.3)
    _draw_row(fig, planes, window=window, n_readers=n_readers, has_truth=has_truth,
              head=_head(title, spacing, window))
    _legend(fig, n_readers=n_readers, has_truth=has_truth)
    return fig


def preview_volume_png(image_hu, soft_mask, binary_mask, spacing_mm, *, reader_masks=None, true_fraction=None,
                       window_hu=DEFAULT_WINDOW_HU, center_zrc=None, title: str | None = None) -> bytes:
    """PNG bytes of the three orthogonal planes through the nodule's centre (module docstring).

    Parameters
    ----------
    image_hu, soft_mask, binary_mask : (Z, H, W) arrays
        CT in HU, alpha in [0, 1], the binary (given or consensus) mask; (z, row, col) order.
    spacing_mm : (z_mm, row_mm, col_mm)
        Sets each panel's physical aspect.
    reader_masks : (R, Z, H, W) bool-like, optional
        Each reader's mask (contoured thin and dotted); the binary mask is then labelled the
        readers' 50 % consensus.
    true_fraction : (Z, H, W) float, optional
        A phantom's truth, contoured at 0.5.
    window_hu : (level_hu, width_hu)
        Display window (default the lung window of the 2-D previews).
    center_zrc : three ints, optional
        The planes' crossing voxel; default :func:`nodule_center_zrc`.
    title : str, optional
        Prefixed to the figure's heading (e.g. the sample id).

    Returns
    -------
    bytes
        A PNG, identical for identical inputs (no metadata, Agg).

    Raises
    ------
    InputError
        Shapes that differ or are not 3-D, bad spacing, window or centre.
    """
    return png_bytes(volume_preview_figure(image_hu, soft_mask, binary_mask, spacing_mm, reader_masks=reader_masks,
                                           true_fraction=true_fraction, window_hu=window_hu, center_zrc=center_zrc,
                                           title=title))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_stem(sample_id: str) -> str:
    stem = _UNSAFE.sub("_", sample_id).strip("._") or "sample"
    return stem[:120]


def _pick(build_dir, n) -> tuple[list[SampleRef], int, tuple[float, float]]:
    """``n`` samples spread evenly over a volume build (the 2-D contact sheet's rule): their refs,
    the number of samples in the build and the recipe's display window."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be an int >= 1, got {n!r}")
    paths = shard_paths(Path(build_dir))
    sizes, window = [], DEFAULT_WINDOW_HU
    for p in paths:
        with open_shard(p) as shard:
            if shard.kind != "volumes":
                raise InputError(f"{p.name} is a {shard.kind!r} shard: three-plane previews are for volume builds "
                                 "(2-D builds: softmask preview)")
            try:
                sizes.append(shard.n_samples)
                window = recipe_window_hu(json.loads(shard.attrs.get("recipe_json", "{}") or "{}"))
            except (OSError, KeyError, ValueError) as exc:
                raise SourceError(f"{p.name} is not a readable shard: {' '.join(str(exc).split())}") from None
    total = sum(sizes)
    if total == 0:
        raise InputError(f"{build_dir} holds no sample to preview")
    picks = sorted(set(np.linspace(0, total - 1, min(int(n), total)).round().astype(int).tolist()))
    offsets = np.cumsum([0] + sizes)
    refs = []
    for k in picks:
        j = int(np.searchsorted(offsets, k, side="right") - 1)
        refs.append(SampleRef(paths[j], int(k - offsets[j])))
    return refs, int(total), window


def _sample_args(sample: Mapping[str, Any]) -> tuple[tuple, dict]:
    spacing = tuple(float(v) for v in np.asarray(sample["spacing_mm"]).ravel())
    return ((sample["image_hu"], sample["soft_mask"], sample["binary_mask"], spacing),
            {"true_fraction": sample.get("true_fraction"),
             "title": f"{sample['sample_id']} [{sample.get('split', '?')}]"})


def write_volume_previews(build_dir, out_dir, *, n: int = 8) -> dict[str, Any]:
    """Render the previews of ``n`` samples spread evenly over a volume build folder (or one volume
    shard): one PNG per sample, ``<out_dir>/<sample_id>.png`` (characters other than letters,
    digits, ``.``, ``_``, ``-`` become ``_``; a clash gets ``-<k>``), each written atomically.

    Parameters
    ----------
    build_dir : path
        A build folder (shards from its manifest, else every shard by name) or one ``.h5`` shard;
        every shard must be of kind "volumes".
    out_dir : path
        Created if missing; existing files of the same names are replaced.
    n : int >= 1
        Samples to draw (all when the build holds fewer), picked as the 2-D contact sheet picks
        them (evenly over the samples in manifest order).

    Returns
    -------
    dict
        ``{"previews": [paths], "sample_ids": [...], "n_requested": n, "n": drawn,
        "n_available": samples in the build}``.

    Raises
    ------
    InputError
        ``n < 1``, no shard, no sample, or a shard that is not a volume shard (the message names
        it and points 2-D builds to ``softmask preview``).
    SourceError
        An unreadable shard or sample (named).
    """
    refs, total, window = _pick(build_dir, n)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, ids, used = [], [], set()
    for ref in refs:
        sample = read_samples([ref])[0]  # one volume in memory at a time
        sid = str(sample["sample_id"])
        stem = _file_stem(sid)
        name, k = f"{stem}.png", 1
        while name in used:
            k += 1
            name = f"{stem}-{k}.png"
        used.add(name)
        args, kwargs = _sample_args(sample)
        atomic.write_bytes(out / name, preview_volume_png(*args, window_hu=window, **kwargs))
        written.append(str(out / name))
        ids.append(sid)
    return {"previews": written, "sample_ids": ids, "n_requested": int(n), "n": len(written),
            "n_available": total}


def volume_preview_report(build_dir, out_png, *, n: int = 4) -> dict[str, Any]:
    """One PNG (a contact sheet) of ``n`` volume samples spread evenly over a build, one row of
    three planes per sample (as :func:`preview_volume_png`), one legend; written atomically.

    The volume counterpart of :func:`softmask_builder.reports.figures.preview_report` (same
    returned keys, so the ``preview`` command can print the same line): ``{"preview": path,
    "n_requested": n, "n": drawn, "n_available": samples in the build, "sample_ids": [...]}``.

    Raises
    ------
    InputError / SourceError
        As :func:`write_volume_previews`.
    """
    refs, total, window = _pick(build_dir, n)
    rows, ids = [], []
    for ref in refs:
        sample = read_samples([ref])[0]
        ids.append(str(sample["sample_id"]))
        args, kwargs = _sample_args(sample)
        planes, spacing, window_checked, _, has_truth = _prepare(*args, None, kwargs["true_fraction"], window, None)
        rows.append((planes, spacing, has_truth, kwargs["title"]))
    heights = [_height_in(planes, _ROW_WIDTH_IN) + 0.7 for planes, *_ in rows]
    fig = new_figure(_ROW_WIDTH_IN + 0.6, sum(heights) + 0.6)
    subfigs = fig.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (planes, spacing, has_truth, title) in zip(subfigs, rows):
        _draw_row(sub, planes, window=window_checked, n_readers=0, has_truth=has_truth,
                  head=_head(title, spacing, window_checked))
    _legend(fig, n_readers=0, has_truth=any(r[2] for r in rows))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out_png, png_bytes(fig))
    return {"preview": str(out_png), "n_requested": int(n), "n": len(rows), "n_available": total,
            "sample_ids": ids}
