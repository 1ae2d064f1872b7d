"""Run the three labelling strategies on the real fixtures and save one picture each.

    .venv/bin/python benchmarks/figures_real.py [--data ../shared/data] [--out docs/img]

* strategy 2 (several readers): LIDC-IDRI-0001's four-reader nodule, central slice;
* strategy 1 (binary mask): the same slice, from the readers' 50 % consensus mask alone;
* strategy 3 (RECIST): the DeepLesion rows whose key slice is present.

Each row shows the windowed crop, the trimap, the Soft Mask and the binary mask (with the
prior drawn over the image: reader contours or RECIST axes). Nothing is written into the
repository except the PNGs under ``--out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from softmask_builder.labelling.pipeline import LabelParams, label_from_mask, label_from_readers, label_from_recist  # noqa: E402
from softmask_builder.sources.deeplesion import load_deeplesion, plan_deeplesion  # noqa: E402
from softmask_builder.sources.lidc import load_lidc, plan_lidc  # noqa: E402
from softmask_builder.labelling.trimap import consensus_mask  # noqa: E402
from softmask_builder.labelling.window import window_hu  # noqa: E402


def _row(axes, title, image01, labels, overlay=None):
    panels = [(image01, "image"), (labels.trimap, "trimap"),
              (labels.soft_mask, "Soft Mask"), (labels.binary_mask, "binary mask")]
    for ax, (arr, name) in zip(axes, panels):
        ax.imshow(arr, cmap="gray", vmin=0, vmax=255 if arr is labels.trimap else 1, interpolation="nearest")
        name = "image (windowed)" if name.startswith("image") else name
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=8)
    if overlay is not None:
        overlay(axes[0])
    axes[0].set_ylabel(title, fontsize=7)


def _figure(rows, path: Path, suptitle: str):
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        _row(ax_row, *row)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SOFTMASK_SHARED_DATA", "../shared/data")))
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    params = LabelParams()
    win = dict(level_hu=params.window_level_hu, width_hu=params.window_width_hu)

    refs, _ = plan_lidc(args.data / "lidc", min_readers=4)
    record = load_lidc(refs[0])
    readers = np.asarray(record.prior)
    image01 = window_hu(record.image_hu, **win)
    by_readers = label_from_readers(record.image_hu, readers, params, sample_id=record.ref.sample_id)
    by_mask = label_from_mask(record.image_hu, consensus_mask(readers, level=0.5), params,
                              sample_id=record.ref.sample_id)

    def contours(ax):
        for mask in readers:
            ax.contour(mask, levels=[0.5], linewidths=0.6)

    _figure([(f"{record.ref.source_key}\n4 readers", image01, by_readers, contours)],
            args.out / "real_lidc_readers.png", "Strategy 2 (readers: intersection / union), LIDC-IDRI-0001")
    _figure([(f"{record.ref.source_key}\n50% consensus mask", image01, by_mask, None)],
            args.out / "real_lidc_mask.png", "Strategy 1 (binary mask, erode/dilate), LIDC-IDRI-0001")

    # The fixture's DeepLesion lesions are mediastinal and liver lesions (its lung rows have no
    # images), so they are labelled in a soft-tissue window (level 40, width 400 HU), as the
    # recipe's `label.window_*` would be set for such a dataset; LNSM itself uses the lung window.
    params = LabelParams(window_level_hu=40.0, window_width_hu=400.0)
    win = dict(level_hu=params.window_level_hu, width_hu=params.window_width_hu)
    refs, _ = plan_deeplesion(args.data / "deeplesion", exclude_noisy=False)
    rows = []
    for ref in refs:
        rec = load_deeplesion(ref)
        labels = label_from_recist(rec.image_hu, rec.prior, params, sample_id=ref.sample_id)
        pts = rec.prior.as_array()

        def axes_overlay(ax, pts=pts):
            ax.plot(pts[:2, 1], pts[:2, 0], "r-", lw=0.8)
            ax.plot(pts[2:, 1], pts[2:, 0], "y-", lw=0.8)

        rows.append((ref.sample_id, window_hu(rec.image_hu, **win), labels, axes_overlay))
    _figure(rows, args.out / "real_deeplesion_recist.png",
            "Strategy 3 (RECIST -> GrabCut -> erode/dilate), real DeepLesion key slices, window 40/400 HU")


if __name__ == "__main__":
    main()
