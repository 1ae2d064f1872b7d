"""Soft Mask dataset builder.

Turns lesion priors (DeepLesion RECIST marks, LIDC-IDRI multi-reader contours, plain binary
masks) into trimaps and then into Soft Masks by closed-form matting (Levin et al. 2008), as in
Wang, Xu et al., DSNet (TNNLS 2023) Sec. III-A, and writes them to verifiable HDF5 shards.

Array conventions used everywhere in this package: axes are (row, col); images are in HU
(float or int16) unless a name says otherwise (``image01`` = windowed to [0, 1]); spacing is
``spacing_mm = (row_mm, col_mm)``; trimaps are uint8 with 0 = background, 128 = unknown,
255 = lesion (see :mod:`softmask_builder.labelling.trimap`).
"""

__version__ = "0.1.0"

from softmask_builder.core import aliases as _aliases

# Modules that moved when the package was grouped by role (README, "Layout"): the old import
# paths stay valid and give the module at its new place.
MOVED_MODULES = {
    f"softmask_builder.{old}": f"softmask_builder.{new}" for old, new in {
        "window": "labelling.window", "crop": "labelling.crop", "trimap": "labelling.trimap",
        "matting": "labelling.matting", "recist": "labelling.recist", "soft_labels": "labelling.soft_labels",
        "pipeline": "labelling.pipeline", "metrics": "labelling.metrics",
        "shards": "formats.shards", "recipes": "formats.recipes", "metadata": "formats.metadata",
        "executor": "core.executor", "plausibility": "sources.plausibility", "relpaths": "sources.relpaths",
        "sources.backgrounds": "phantom.backgrounds", "phantom_shapes": "phantom.shapes",
        "hybrid": "phantom.hybrid",
        "build": "dataset.build", "results": "dataset.results", "release": "dataset.release",
        "counting": "dataset.counting", "locking": "dataset.locking",
        "figures": "reports.figures", "report": "reports.report", "agreement": "reports.agreement",
        "image_stats": "reports.image_stats", "cli_lidc": "cli.lidc", "summaries": "cli.summaries",
    }.items()
}
_aliases.install(MOVED_MODULES)
