"""QC report of a built dataset: one self-contained HTML page (every image embedded as base64 PNG,
no external file, script or font), for a reviewer who wants to know what to look at first.

Sections: counts per split (from ``manifest.json``), a lesion-size histogram per split, the
rejects table (``rejects.csv``), and the samples to review first, each drawn with the preview's
overlay (:mod:`softmask_builder.reports.figures`):

* **largest unknown band**: most trimap pixels of value 128 (where the matting, not the prior,
  decided);
* **largest disagreement between the trimap's sure lesion and the Soft Mask**: how far the Soft
  Mask's lesion edge (alpha >= 0.5) moved from the middle of the unknown band, as a fraction of
  the band's inner or outer part (:func:`edge_offset`: 0 on the band's mid-line, -1 at the sure
  core, +1 at the band's outer edge; ranked by its size). The matting keeps alpha = 1 on the sure lesion and 0 on
  the sure background, so the trimap and the Soft Mask can only disagree inside the band; an edge
  pushed to either side of it says the prior's band is off. (The earlier measure,
  ``1 - IoU(sure, alpha >= 0.5)``, grew with the band's share of the lesion and so listed the
  smallest lesions a second time: on the 59-sample hybrid sample its Spearman correlation with
  lesion size was -0.66, this one's -0.27.)
* **smallest lesions**: fewest ``binary_mask`` pixels, in mm² (pixel spacing from the meta
  table; in px when the spacing is unknown).

Ties are broken by ``sample_id``. Shards are read only through :mod:`softmask_builder.formats.shards`. The page holds no
time stamp or absolute path: the same dataset gives the same bytes.
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from softmask_builder.core import atomic
from softmask_builder.core.validate import TRIMAP_LESION, TRIMAP_UNKNOWN
from softmask_builder.reports.figures import (SampleRef, new_figure, png_bytes, read_samples, recipe_window_hu, samples_figure,
                      shard_paths)
from softmask_builder.formats.release_folder import REJECTS, UNSELECTED, read_manifest
from softmask_builder.formats.shards import open_shard

SPLITS = ("train", "val", "test")
N_REVIEW = 4
MAX_REJECT_ROWS = 200


@dataclass(frozen=True)
class SampleStats:
    """Per-sample numbers the report ranks by (see the module docstring)."""

    sample_id: str
    split: str
    ref: SampleRef
    lesion_px: int
    lesion_mm2: float          # NaN when the spacing is unknown
    unknown_px: int
    sure_px: int
    soft_px: int               # alpha >= 0.5
    edge_offset: float         # signed, see edge_offset(); 0 without a band

    @property
    def disagreement(self) -> float:
        """``|edge_offset|``: what the review ranks by."""
        return abs(self.edge_offset)

    @property
    def diameter_mm(self) -> float:
        """Equivalent-circle diameter of the binary mask, mm (NaN without spacing)."""
        return float(2.0 * np.sqrt(self.lesion_mm2 / np.pi))


def edge_offset(trimap: np.ndarray, alpha: np.ndarray) -> float:
    """Where the Soft Mask's lesion edge lies in the trimap's unknown band, in [-1, 1].

    Each unknown pixel gets its relative depth ``t = d_sure / (d_sure + d_background)`` (Euclidean
    distances to the nearest sure-lesion and sure-background pixel): the band's mid-line is
    t = 0.5. The lesion the mid-line encloses has ``A_mid = sure + #(unknown with t < 0.5)`` pixels;
    the result is ``(#(alpha >= 0.5) - A_mid)`` divided by the pixel count of the band's inner part
    (t < 0.5) when negative, of its outer part when positive, clipped to [-1, 1]: 0 when the Soft
    Mask's lesion area matches the mid-line's, -1 when it shrank to the sure core, +1 when it grew
    to the band's outer edge.
    0.0 when there is no unknown pixel, no sure lesion or no sure background (no band to be in).
    """
    from scipy import ndimage as ndi

    trimap = np.asarray(trimap)
    sure, background, unknown = trimap == TRIMAP_LESION, trimap == 0, trimap == TRIMAP_UNKNOWN
    n_unknown = int(np.count_nonzero(unknown))
    if n_unknown == 0 or not sure.any() or not background.any():
        return 0.0
    d_sure = ndi.distance_transform_edt(~sure)
    d_background = ndi.distance_transform_edt(~background)
    t = d_sure / (d_sure + d_background)
    inner = int(np.count_nonzero(unknown & (t < 0.5)))
    a_mid = int(np.count_nonzero(sure)) + inner
    moved = int(np.count_nonzero(np.asarray(alpha, np.float32) >= 0.5)) - a_mid
    room = inner if moved < 0 else n_unknown - inner  # the band's inner or outer part
    return float(np.clip(moved / room, -1.0, 1.0)) if room else 0.0


def sample_stats(sample: dict[str, Any], ref: SampleRef) -> SampleStats:
    """The ranking numbers of one sample (arrays as :meth:`softmask_builder.formats.shards.Shard.sample` returns them)."""
    trimap = np.asarray(sample["trimap"])
    alpha = np.asarray(sample["soft_mask"], np.float32)
    binary = np.asarray(sample["binary_mask"]).astype(bool)
    sure, soft = trimap == TRIMAP_LESION, alpha >= 0.5
    spacing = np.asarray(sample.get("spacing_mm", (np.nan, np.nan)), np.float64)
    pixel_mm2 = float(spacing[0] * spacing[1]) if np.all(np.isfinite(spacing)) else float("nan")
    lesion_px = int(np.count_nonzero(binary))
    return SampleStats(sample_id=str(sample["sample_id"]), split=str(sample["split"]), ref=ref,
                       lesion_px=lesion_px, lesion_mm2=lesion_px * pixel_mm2,
                       unknown_px=int(np.count_nonzero(trimap == TRIMAP_UNKNOWN)), sure_px=int(np.count_nonzero(sure)),
                       soft_px=int(np.count_nonzero(soft)), edge_offset=edge_offset(trimap, alpha))


@dataclass(frozen=True)
class VolumeStats:
    """Per-volume numbers of a volume build's report (kind "volumes", issue 26): voxel counts and
    volumes in mm³ (voxel volume = the product of the sample's ``spacing_mm``)."""

    sample_id: str
    split: str
    ref: SampleRef
    lesion_voxels: int         # binary_mask
    lesion_mm3: float          # binary_mask voxels x voxel volume
    soft_mm3: float            # sum(alpha) x voxel volume: the Soft Mask's partial-volume lesion volume
    unknown_voxels: int        # trimap 128


def volume_stats(sample: dict[str, Any], ref: SampleRef) -> VolumeStats:
    """The table row of one volume sample (arrays (Z, H, W) as :meth:`Shard.sample` returns them)."""
    voxel_mm3 = float(np.prod(np.asarray(sample["spacing_mm"], np.float64)))
    lesion = int(np.count_nonzero(np.asarray(sample["binary_mask"])))
    alpha_sum = float(np.asarray(sample["soft_mask"], np.float32).sum(dtype=np.float64))
    return VolumeStats(sample_id=str(sample["sample_id"]), split=str(sample["split"]), ref=ref,
                       lesion_voxels=lesion, lesion_mm3=lesion * voxel_mm3, soft_mm3=alpha_sum * voxel_mm3,
                       unknown_voxels=int(np.count_nonzero(np.asarray(sample["trimap"]) == TRIMAP_UNKNOWN)))


@dataclass
class ReportData:
    """Everything the page shows, read from a dataset folder."""

    folder: Path
    manifest: dict[str, Any]
    rejects: list[dict[str, str]]
    stats: list[SampleStats] = field(default_factory=list)
    unselected: list[dict[str, str]] = field(default_factory=list)
    volumes: list[VolumeStats] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "samples"))

    def review(self) -> dict[str, list[SampleStats]]:
        """The samples to look at first: ``N_REVIEW`` per criterion (module docstring)."""
        if self.kind != "samples" or not self.stats:
            return {}
        by_id = sorted(self.stats, key=lambda s: s.sample_id)
        size = [s.lesion_mm2 if np.isfinite(s.lesion_mm2) else float(s.lesion_px) for s in by_id]
        order_size = sorted(range(len(by_id)), key=lambda k: (size[k], by_id[k].sample_id))
        return {
            "largest unknown band": sorted(by_id, key=lambda s: (-s.unknown_px, s.sample_id))[:N_REVIEW],
            "largest sure-lesion vs Soft Mask disagreement":
                sorted(by_id, key=lambda s: (-s.disagreement, s.sample_id))[:N_REVIEW],
            "smallest lesions": [by_id[k] for k in order_size[:N_REVIEW]],
        }


def collect(folder: str | Path) -> ReportData:
    """Read a finished dataset folder: manifest, rejects and per-sample statistics."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    rejects: list[dict[str, str]] = []
    if (folder / REJECTS).is_file():
        with open(folder / REJECTS, newline="") as fh:
            rejects = list(csv.DictReader(fh))
    unselected: list[dict[str, str]] = []
    if (folder / UNSELECTED).is_file():
        with open(folder / UNSELECTED, newline="") as fh:
            unselected = list(csv.DictReader(fh))
    data = ReportData(folder, manifest, rejects, unselected=unselected)
    if data.kind == "volumes":
        for path in shard_paths(folder):
            with open_shard(path) as shard:
                for i in range(shard.n_samples):  # one volume in memory at a time
                    data.volumes.append(volume_stats(shard.sample(i), SampleRef(path, i)))
        return data
    if data.kind != "samples":
        return data
    for path in shard_paths(folder):
        with open_shard(path) as shard:
            for i in range(shard.n_samples):
                data.stats.append(sample_stats(shard.sample(i), SampleRef(path, i)))
    return data


# --- page ----------------------------------------------------------------------------------------

def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def size_histogram_png(stats: Sequence[SampleStats]) -> bytes:
    """Stacked histogram of equivalent lesion diameters (mm, or sqrt of px without spacing) per split."""
    fig = new_figure(6.4, 3.0)
    ax = fig.subplots()
    mm = all(np.isfinite(s.lesion_mm2) for s in stats)
    value = (lambda s: s.diameter_mm) if mm else (lambda s: float(np.sqrt(s.lesion_px)))
    splits = [sp for sp in SPLITS if any(s.split == sp for s in stats)]
    values = [[value(s) for s in stats if s.split == sp] for sp in splits]
    allv = [v for vs in values for v in vs]
    bins = np.linspace(0.0, max(allv) * 1.05 if allv and max(allv) > 0 else 1.0, 21)
    ax.hist(values, bins=bins, stacked=True, label=[f"{sp} ({len(v)})" for sp, v in zip(splits, values)],
            color=["#4c72b0", "#dd8452", "#55a868"][:len(splits)])
    ax.set_xlabel("lesion size: equivalent-circle diameter of binary_mask (mm)" if mm
                  else "lesion size: sqrt(binary_mask pixels) (px)", fontsize=8)
    ax.set_ylabel("samples", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, title="split (samples)", title_fontsize=7)
    return png_bytes(fig)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} th{background:#f3f3f3}
img{max-width:100%;height:auto} .note{color:#555;font-size:13px}
"""


def render_html(data: ReportData) -> str:
    """The page as a string (see the module docstring)."""
    m = data.manifest
    title = f"{m.get('dataset', '?')} {m.get('dataset_version', '')}: QC report"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    by_filter = m.get("unselected_by_filter") or {}
    causes = ", ".join(f"{html.escape(str(k))} {v}" for k, v in by_filter.items())
    parts.append(f"<p class=\"note\">{html.escape(data.folder.name)}: {m.get('n_samples', 0)} samples built of "
                 f"{m.get('n_planned', 0)} planned, {m.get('n_rejects', 0)} rejected, "
                 f"{m.get('n_unselected', 0)} left out by the recipe's selection"
                 f"{f' ({causes})' if causes else ''}; kind {html.escape(data.kind)}, "
                 f"builder {html.escape(str(m.get('builder_version', '?')))}, schema {m.get('schema_version', '?')}, "
                 f"recipe sha256 <code>{html.escape(str(m.get('recipe_sha256', ''))[:16])}</code>.</p>")
    if m.get("warnings"):
        parts += ["<h2>Warnings</h2>", "<ul>" + "".join(f"<li>{html.escape(str(w))}</li>" for w in m["warnings"])
                  + "</ul>"]
    splits = m.get("splits", {})
    rows = [[sp, c.get("n_samples", 0), c.get("n_patients", ""), c.get("n_planned", 0), c.get("n_shards", "")]
            for sp, c in splits.items()]
    rows.append(["total", m.get("n_samples", 0), "", m.get("n_planned", 0), len(m.get("shards", []))])
    parts += ["<h2>Counts per split</h2>", _table(["split", "samples", "patients", "planned", "shards"], rows)]
    if data.stats:
        parts += ["<h2>Lesion sizes</h2>", _img(size_histogram_png(data.stats), "lesion-size histogram")]
    parts.append(f"<h2>Rejects ({len(data.rejects)})</h2>")
    if data.rejects:
        shown = data.rejects[:MAX_REJECT_ROWS]
        parts.append(_table(["sample_id", "stage", "reason"],
                            [[r.get("sample_id", ""), r.get("stage", ""), r.get("reason", "")] for r in shown]))
        if len(data.rejects) > len(shown):
            parts.append(f"<p class=\"note\">{len(data.rejects) - len(shown)} more rows in {REJECTS}.</p>")
    else:
        parts.append("<p class=\"note\">No sample was rejected.</p>")
    parts.append(f"<h2>Left out by the recipe's selection ({m.get('n_unselected', len(data.unselected))})</h2>")
    if by_filter:
        parts.append(_table(["filter (recipe option)", "rows"], [[k, v] for k, v in by_filter.items()]))
    if data.unselected:
        shown_u = data.unselected[:MAX_REJECT_ROWS]
        parts.append(_table(["sample_id", "filter", "detail"],
                            [[r.get("sample_id", ""), r.get("filter", ""), r.get("detail", "")] for r in shown_u]))
        if len(data.unselected) > len(shown_u):
            parts.append(f"<p class=\"note\">{len(data.unselected) - len(shown_u)} more rows in {UNSELECTED}.</p>")
    elif not m.get("n_unselected"):
        parts.append("<p class=\"note\">No row of the source was left out.</p>")
    if data.volumes:
        parts += _volume_section(data)
    review = data.review()
    if review:
        level, width = recipe_window_hu(m.get("recipe", {}))
        parts.append("<h2>Samples to review first</h2><p class=\"note\">Overlay: CT in the recipe's window, trimap "
                     "unknown band filled, sure-lesion edge dashed, Soft Mask 0.5 contour solid; below, the Soft "
                     "Mask with a zoomed inset of one edge. Edge offset: where the Soft Mask's 0.5 edge lies in "
                     "the unknown band (0 on the band's mid-line, -1 at the sure lesion, +1 at the band's outer "
                     "edge); the disagreement ranking sorts by its size.</p>")
        for name, picked in review.items():
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(_table(
                ["sample_id", "split", "lesion px", "lesion mm²", "unknown px", "sure px", "alpha≥0.5 px",
                 "edge offset"],
                [[s.sample_id, s.split, s.lesion_px, f"{s.lesion_mm2:.1f}", s.unknown_px, s.sure_px, s.soft_px,
                  f"{s.edge_offset:+.3f}"] for s in picked]))
            notes = [f"band {s.unknown_px} px, edge {s.edge_offset:+.2f}, {s.lesion_mm2:.0f} mm²"
                     for s in picked]
            fig = samples_figure(read_samples([s.ref for s in picked]), level_hu=level, width_hu=width,
                                 title=name, notes=notes)
            parts.append(_img(png_bytes(fig), f"{name}: overlays"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _volume_section(data: ReportData) -> list[str]:
    """A volume build's table (every volume, by id) and the three-plane previews of the
    ``N_REVIEW`` volumes with the largest unknown band."""
    from softmask_builder.reports.preview3d import preview_volume_png

    vols = sorted(data.volumes, key=lambda v: v.sample_id)
    shown = vols[:MAX_REJECT_ROWS]
    parts = ["<h2>Volumes</h2><p class=\"note\">Lesion: the binary mask's voxels and volume; Soft Mask: "
             "the sum of alpha times the voxel volume (the partial-volume lesion volume); unknown: the trimap's "
             "band, where the matting decided.</p>",
             _table(["sample_id", "split", "lesion voxels", "lesion mm³", "Soft Mask mm³", "unknown voxels"],
                    [[v.sample_id, v.split, v.lesion_voxels, f"{v.lesion_mm3:.1f}", f"{v.soft_mm3:.1f}",
                      v.unknown_voxels] for v in shown])]
    if len(vols) > len(shown):
        parts.append(f"<p class=\"note\">{len(vols) - len(shown)} more volumes (softmask inspect).</p>")
    window = recipe_window_hu(data.manifest.get("recipe", {}))
    picked = sorted(vols, key=lambda v: (-v.unknown_voxels, v.sample_id))[:N_REVIEW]
    parts.append("<h3>largest unknown band</h3><p class=\"note\">Axial, coronal and sagittal planes through "
                 "the nodule's centre (softmask preview draws the same).</p>")
    for v in picked:
        smp = read_samples([v.ref])[0]
        png = preview_volume_png(smp["image_hu"], smp["soft_mask"], smp["binary_mask"],
                                 tuple(float(x) for x in np.asarray(smp["spacing_mm"]).ravel()),
                                 true_fraction=smp.get("true_fraction"), window_hu=window,
                                 title=f"{v.sample_id} [{v.split}]")
        parts.append(_img(png, f"{v.sample_id}: three planes"))
    return parts


def write_report(folder: str | Path, out_html: str | Path) -> dict[str, Any]:
    """Write the QC page of dataset ``folder`` to ``out_html`` (atomically); return a summary
    ``{"report", "n_samples", "n_rejects", "review": {criterion: [sample ids]}}``. A volume build
    (kind "volumes") gets a table of its volumes (voxels, mm³) and the three-plane previews of the
    volumes with the largest unknown band instead of the 2-D review; ``n_samples`` counts its volumes."""
    data = collect(folder)
    text = render_html(data)
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_html, text)
    return {"report": str(out_html), "bytes": len(text.encode("utf-8")),
            "n_samples": len(data.volumes) if data.kind == "volumes" else len(data.stats),
            "n_rejects": len(data.rejects),
            "review": {k: [s.sample_id for s in v] for k, v in data.review().items()}}


__all__ = ["collect", "render_html", "write_report", "sample_stats", "SampleStats", "ReportData", "volume_stats",
           "VolumeStats"]
