"""Pictures of built samples: the preview contact sheet and the per-sample panels the QC report
embeds. Drawn with matplotlib's Agg canvas (no display), written atomically without metadata, so
the same dataset gives the same PNG bytes.

Each sample gets two panels, axes (row, col) as in the arrays:

* **overlay**: the CT crop windowed to the recipe's HU window (grey), the trimap's unknown band
  (value 128) filled semi-transparent, the edge of its sure lesion (255) dashed, and the Soft
  Mask's 0.5 contour as a solid line;
* **Soft Mask**: alpha in a perceptual colormap (viridis, 0 to 1, one shared colour bar) with a
  zoomed inset of one edge (the unknown-band pixel whose alpha is nearest 0.5, the first in
  row-major order on ties), where the soft transition the matting produced can be seen pixel by
  pixel.

Slice shards (no labels) get the windowed image only.
"""

from __future__ import annotations

import io
import textwrap
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from softmask_builder.core import atomic
from softmask_builder.core.validate import TRIMAP_LESION, TRIMAP_UNKNOWN
from softmask_builder.errors import InputError, SourceError
from softmask_builder.formats.release_folder import MANIFEST, manifest_shard_files, read_manifest
from softmask_builder.formats.shards import open_shard, parse_shard_name

ALPHA_CMAP = "viridis"
BAND_RGBA = (1.0, 0.62, 0.0, 0.45)   # unknown band fill (orange)
SURE_COLOR = "#4dd2ff"               # sure-lesion edge (light blue, dashed)
CONTOUR_COLOR = "#ff2d55"            # Soft Mask 0.5 contour (red)
DEFAULT_WINDOW_HU = (-600.0, 1500.0)


@dataclass(frozen=True)
class SampleRef:
    """Where a sample lives: shard path and index inside it."""

    path: Path
    index: int


def shard_paths(path: str | Path) -> list[Path]:
    """Shards of a dataset folder (from its manifest, else by name), or ``[path]`` for a file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / MANIFEST).is_file():
        return [path / name for name in manifest_shard_files(read_manifest(path))]
    found = sorted(p for p in path.glob("*.h5") if parse_shard_name(p.name) is not None)
    if not found:
        raise InputError(f"no shards in {path}")
    return found


def recipe_window_hu(recipe: dict[str, Any]) -> tuple[float, float]:
    """(level, width) in HU of a recipe's label parameters (the lung window when absent)."""
    label = recipe.get("label", {}) or {}
    return (float(label.get("window_level_hu", DEFAULT_WINDOW_HU[0])),
            float(label.get("window_width_hu", DEFAULT_WINDOW_HU[1])))


def windowed(image_hu: np.ndarray, level_hu: float, width_hu: float) -> np.ndarray:
    """HU -> [0, 1] through the window ``level_hu ± width_hu / 2`` (clipped)."""
    low = level_hu - width_hu / 2.0
    return np.clip((np.asarray(image_hu, np.float32) - low) / width_hu, 0.0, 1.0)


def edge_window(alpha: np.ndarray, trimap: np.ndarray, *, size_px: int = 12) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) of a ``size_px`` square around the unknown-band pixel whose alpha is
    nearest 0.5 (row-major first on ties), clipped to the crop; None without an unknown band."""
    band = trimap == TRIMAP_UNKNOWN
    if not band.any():
        return None
    dist = np.where(band, np.abs(alpha.astype(np.float64) - 0.5), np.inf)
    r, c = np.unravel_index(int(np.argmin(dist)), dist.shape)
    rows, cols = alpha.shape
    size = min(size_px, rows, cols)
    r0 = int(np.clip(r - size // 2, 0, rows - size))
    c0 = int(np.clip(c - size // 2, 0, cols - size))
    return r0, r0 + size, c0, c0 + size


def _contour(ax, field: np.ndarray, *, color: str, style: str, width: float) -> None:
    # matplotlib warns (an error under the test suite) when the level is outside the data: skip.
    if field.min() < 0.5 <= field.max():
        ax.contour(field, levels=[0.5], colors=[color], linestyles=[style], linewidths=[width])


def draw_overlay(ax, sample: dict[str, Any], *, level_hu: float, width_hu: float, title: str | None = None) -> None:
    """Windowed image + unknown band + sure-lesion edge + Soft Mask 0.5 contour on ``ax``."""
    ax.imshow(windowed(sample["image_hu"], level_hu, width_hu), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    if "trimap" in sample:
        trimap = np.asarray(sample["trimap"])
        band = np.zeros(trimap.shape + (4,), np.float32)
        band[trimap == TRIMAP_UNKNOWN] = BAND_RGBA
        ax.imshow(band, interpolation="nearest")
        _contour(ax, (trimap == TRIMAP_LESION).astype(np.float32), color=SURE_COLOR, style="dashed", width=1.0)
        _contour(ax, np.asarray(sample["soft_mask"], np.float32), color=CONTOUR_COLOR, style="solid", width=1.3)
        box = lesion_view(trimap)
        if box is not None and box[1] - box[0] < trimap.shape[0]:
            r0, r1, c0, c1 = box
            ax.set_xlim(c0 - 0.5, c1 - 0.5)
            ax.set_ylim(r1 - 0.5, r0 - 0.5)
            ax.text(0.02, 0.03, f"{r1 - r0}x{c1 - c0} of {trimap.shape[0]}x{trimap.shape[1]} px", color="white",
                    fontsize=6, transform=ax.transAxes, bbox=dict(facecolor="black", alpha=0.55, pad=1.0, linewidth=0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, loc="left")


def lesion_view(trimap: np.ndarray, *, margin: float = 0.35, min_px: int = 28) -> tuple[int, int, int, int] | None:
    """Square (row0, row1, col0, col1) around the trimap's non-background pixels, ``margin`` of
    their extent on each side and at least ``min_px`` wide, clipped to the crop; None when the
    trimap is all background."""
    rows_any, cols_any = np.nonzero(trimap != 0)
    if rows_any.size == 0:
        return None
    n_rows, n_cols = trimap.shape
    extent = max(np.ptp(rows_any), np.ptp(cols_any)) + 1
    size = int(min(max(min_px, round(extent * (1 + 2 * margin))), n_rows, n_cols))
    rc, cc = (rows_any.min() + rows_any.max() + 1) / 2, (cols_any.min() + cols_any.max() + 1) / 2
    r0 = int(np.clip(round(rc - size / 2), 0, n_rows - size))
    c0 = int(np.clip(round(cc - size / 2), 0, n_cols - size))
    return r0, r0 + size, c0, c0 + size


def draw_alpha(ax, sample: dict[str, Any], *, zoom_px: int = 12):
    """Soft Mask in ``ALPHA_CMAP`` with a zoomed inset of one edge; returns the image (for a colour bar)."""
    alpha = np.asarray(sample["soft_mask"], np.float32)
    im = ax.imshow(alpha, cmap=ALPHA_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    box = edge_window(alpha, np.asarray(sample["trimap"]), size_px=zoom_px)
    if box is not None:
        r0, r1, c0, c1 = box
        # Inset in the corner farthest from the edge, so it does not hide what it magnifies.
        rows, cols = alpha.shape
        left = (c0 + c1) / 2 > cols / 2
        top = (r0 + r1) / 2 > rows / 2
        ins = ax.inset_axes([0.02 if left else 0.53, 0.53 if top else 0.02, 0.45, 0.45])
        ins.imshow(alpha, cmap=ALPHA_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        _contour(ins, alpha, color=CONTOUR_COLOR, style="solid", width=1.0)
        ins.set_xlim(c0 - 0.5, c1 - 0.5)
        ins.set_ylim(r1 - 0.5, r0 - 0.5)
        ins.set_xticks([])
        ins.set_yticks([])
        for spine in ins.spines.values():
            spine.set_edgecolor("white")
            spine.set_linewidth(1.2)
        ax.indicate_inset_zoom(ins, edgecolor="white", alpha=0.9)
        ins.text(0.03, 0.04, f"edge x{rows / (r1 - r0):.0f}", color="white", fontsize=6, transform=ins.transAxes)
    return im


def legend_handles():
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Patch(facecolor=BAND_RGBA, label="trimap unknown band (128)"),
            Line2D([], [], color=SURE_COLOR, linestyle="dashed", label="trimap sure lesion (255), edge"),
            Line2D([], [], color=CONTOUR_COLOR, label="Soft Mask = 0.5 contour")]


def sample_title(sample: dict[str, Any]) -> str:
    return f"{sample['sample_id']}  [{sample.get('split', '?')}]"


def new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def samples_figure(samples: Sequence[dict[str, Any]], *, level_hu: float, width_hu: float, kind: str = "samples",
                   title: str | None = None, per_row: int = 4, notes: Sequence[str] | None = None):
    """A figure of ``samples``: per sample an overlay panel above a Soft Mask panel (slice shards:
    the image only), ``per_row`` samples a row, one legend and one colour bar. ``notes``: one extra
    line under each sample's title (e.g. the metric that picked it)."""
    if not samples:
        raise InputError("no sample to draw")
    labelled = kind == "samples"
    per_row = max(1, min(per_row, len(samples)))
    n_rows = -(-len(samples) // per_row)
    panels = 2 if labelled else 1
    fig = new_figure(2.55 * per_row + (0.7 if labelled else 0.0), 2.5 * panels * n_rows + 0.9)
    axes = fig.subplots(n_rows * panels, per_row, squeeze=False)
    im = None
    for k, sample in enumerate(samples):
        r, c = divmod(k, per_row)
        head = sample_title(sample) + (f"\n{notes[k]}" if notes else "")
        draw_overlay(axes[r * panels][c], sample, level_hu=level_hu, width_hu=width_hu, title=head)
        if labelled:
            im = draw_alpha(axes[r * panels + 1][c], sample)
    for k in range(len(samples), n_rows * per_row):
        r, c = divmod(k, per_row)
        for p in range(panels):
            axes[r * panels + p][c].set_axis_off()
    window = f"window level {level_hu:g} HU, width {width_hu:g} HU"
    # Text never wider than the figure: the title wrapped to its width (about 13 characters an inch
    # at 10 pt), the legend in as many columns as fit (about 2.4 in a column at 8 pt).
    width_in = fig.get_figwidth()
    fig.suptitle(textwrap.fill(f"{title + ' - ' if title else ''}{window}", width=max(20, int(width_in * 13))),
                 fontsize=10)
    if labelled:
        fig.legend(handles=legend_handles(), loc="outside lower center", ncols=max(1, min(3, int(width_in / 2.4))),
                   fontsize=8, frameon=False)
        bar = fig.colorbar(im, ax=axes[1::2, :].ravel().tolist(), shrink=0.6, pad=0.01)
        bar.set_label("Soft Mask alpha (0 background, 1 lesion)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write_png_atomic(fig, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out_png, png_bytes(fig))
    return out_png


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_samples(refs: Sequence[SampleRef]) -> list[dict[str, Any]]:
    """Read samples through :mod:`softmask_builder.formats.shards` (each shard opened once).

    Raises :class:`SourceError` naming the shard and the sample index when a shard is unreadable
    or a sample's chunk is corrupt (h5py reports a bad checksum or inflate error as OSError)."""
    out: list[dict[str, Any] | None] = [None] * len(refs)
    by_path: dict[Path, list[int]] = {}
    for k, ref in enumerate(refs):
        by_path.setdefault(ref.path, []).append(k)
    for path, ks in by_path.items():
        with open_shard(path) as shard:
            for k in ks:
                try:
                    out[k] = shard.sample(refs[k].index)
                except (OSError, KeyError, ValueError) as exc:
                    raise SourceError(f"{Path(path).name}: sample {refs[k].index} is unreadable "
                                      f"({_one_line(exc)})") from None
    return out  # type: ignore[return-value]


def preview_report(path: str | Path, out_png: str | Path, *, n: int = 8) -> dict[str, Any]:
    """Write the contact sheet of ``n`` samples spread evenly over a dataset folder (or one shard;
    see the module docstring for what each panel shows) and return what it drew:
    ``{"preview": path, "n_requested": n, "n": samples drawn, "n_available": samples in the
    dataset, "sample_ids": [...]}`` (a 5-sample shard asked for 20 draws 5).

    Raises
    ------
    InputError
        ``n < 1``, no shard, or no sample.
    SourceError
        A shard is unreadable or a sample's chunk is corrupt (the message names the shard and the
        sample index).
    """
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    paths = shard_paths(Path(path))
    sizes, kind, recipe, dataset = [], "samples", {}, ""
    for p in paths:
        with open_shard(p) as s:
            try:
                sizes.append(s.n_samples)
                kind = s.kind
                recipe = json.loads(s.attrs.get("recipe_json", "{}"))
                dataset = str(s.attrs.get("dataset", ""))
            except (OSError, KeyError, ValueError) as exc:
                raise SourceError(f"{p.name} is not a readable shard: {_one_line(exc)}") from None
    total = sum(sizes)
    if total == 0:
        raise InputError(f"{path} holds no sample to preview")
    picks = sorted(set(np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist()))
    offsets = np.cumsum([0] + sizes)
    refs = []
    for k in picks:
        j = int(np.searchsorted(offsets, k, side="right") - 1)
        refs.append(SampleRef(paths[j], int(k - offsets[j])))
    level, width = recipe_window_hu(recipe)
    samples = read_samples(refs)
    fig = samples_figure(samples, level_hu=level, width_hu=width, kind=kind,
                         title=f"{dataset}: {len(picks)} of {total} samples")
    written = write_png_atomic(fig, out_png)
    return {"preview": str(written), "n_requested": int(n), "n": len(picks), "n_available": int(total),
            "sample_ids": [str(smp["sample_id"]) for smp in samples]}


def write_preview(path: str | Path, out_png: str | Path, *, n: int = 8) -> Path:
    """The contact sheet of :func:`preview_report`; returns the PNG's path."""
    return Path(preview_report(path, out_png, n=n)["preview"])


__all__ = ["write_preview", "preview_report", "samples_figure", "draw_overlay", "draw_alpha", "edge_window", "windowed",
           "shard_paths", "read_samples", "SampleRef", "png_bytes", "write_png_atomic", "recipe_window_hu"]
