"""Release files of a built dataset and their verification.

:func:`write_release` writes, next to the shards, ``rejects.csv``, ``manifest.json``,
``DATASET_CARD.md`` and last ``SHA256SUMS`` (``sha256sum -c SHA256SUMS`` works inside the folder),
each atomically. None of them holds a time stamp or a path, so two builds of the same inputs give
the same release files. :func:`verify` re-hashes everything and checks the schema and the counts;
:func:`write_preview` draws a contact sheet.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softmask_builder import __version__
from softmask_builder.dataset import counting
from softmask_builder.core import atomic
from softmask_builder.errors import SoftMaskError
from softmask_builder.formats.metadata import (CITATIONS, citation_keys, citation_text, croissant,  # noqa: F401
                                              hub_front_matter, licence, read_source_provenance, source_family)
from softmask_builder.formats.shards import (READABLE_VERSIONS, SCHEMA_VERSION, check_shard, check_shard_values,
                                             open_shard, parse_shard_name, sha256_file)

if TYPE_CHECKING:  # pragma: no cover
    from softmask_builder.dataset.results import BuildResult

from softmask_builder.formats.release_folder import (CARD, CROISSANT, MANIFEST, REJECTS,  # noqa: F401 (release API)
                                                     REJECTS_HEADER, SUMS, UNSELECTED, UNSELECTED_HEADER,
                                                     ManifestError, parse_sums, read_manifest, sums_text)
from softmask_builder.reports.figures import preview_report, write_preview  # noqa: F401 (release API)

_VERSIONED = ("numpy", "scipy", "scikit-image", "opencv-python-headless", "h5py", "joblib", "numba", "pydicom",
              "pandas")


def library_versions() -> dict[str, str]:
    """Versions of Python, HDF5 and the libraries whose output ends up in a shard."""
    import h5py

    out = {"python": platform.python_version(), "hdf5": h5py.version.hdf5_version,
           "softmask_builder": __version__}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def rejects_csv_text(rejects) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REJECTS_HEADER)
    for r in rejects:
        writer.writerow([r.sample_id, r.stage, r.reason])
    return buf.getvalue()


def manifest_dict(result: "BuildResult") -> dict[str, Any]:
    """The content of ``manifest.json`` for a finished build."""
    from collections import Counter

    recipe = result.plan.recipe
    rejects = result.rejects
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": recipe.kind,
        "dataset": recipe.dataset,
        "dataset_version": recipe.version,
        "builder_version": __version__,
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256(),
        "label_params": json.loads(recipe.label.to_json()),
        "label_params_sha256": recipe.label.sha256(),
        "n_samples": result.n_samples,
        "n_planned": result.plan.n_planned,
        "n_unselected": result.plan.n_unselected,
        "unselected_by_filter": counting.by_filter(result.plan.unselected),
        "warnings": result.warnings,
        "n_rejects": len(rejects),
        "rejects_by_stage": dict(sorted(Counter(r.stage for r in rejects).items())),
        "targets": dict(result.plan.targets),
        "splits": result.split_counts(),
        "shards": [{"file": s.name, "split": s.split, "index": s.index, "count": s.count,
                    "n_samples": s.n_samples, "n_planned": s.n_planned, "sha256": s.sha256, "bytes": s.bytes}
                   for s in result.shards],
        "versions": library_versions(),
        # What a phantom source is made of (licence and citations follow it); absent for real sources.
        **({"provenance": prov} if (prov := read_source_provenance(result.plan.source)) else {}),
        **_optional_arrays_entry(result),
    }


def _optional_arrays_entry(result: "BuildResult") -> dict[str, Any]:
    """``{"optional_arrays": [...]}`` when the build's shards carry schema 3's optional arrays
    (``true_fraction`` of a phantom source), else {} (real builds' manifests are unchanged)."""
    from softmask_builder.formats.shards import optional_arrays

    found: set[str] = set()
    for s in result.shards:
        if s.n_samples:
            with open_shard(Path(result.out) / s.name) as shard:
                found |= {k for k in optional_arrays(shard.kind) if k in shard.file}
    return {"optional_arrays": sorted(found)} if found else {}


def write_release(result: "BuildResult") -> dict[str, Any]:
    """Write rejects.csv, unselected.csv, manifest.json, DATASET_CARD.md, croissant.json, then
    SHA256SUMS; return the manifest."""
    out = Path(result.out)
    manifest = manifest_dict(result)
    atomic.write_text(out / REJECTS, rejects_csv_text(result.rejects))
    atomic.write_text(out / UNSELECTED, counting.unselected_csv_text(result.plan.unselected))
    atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    atomic.write_text(out / CARD, dataset_card(manifest, result.rejects))
    atomic.write_text(out / CROISSANT, json.dumps(croissant(manifest, cite_as=citation_text(manifest)), indent=1,
                                                   sort_keys=True, ensure_ascii=False) + "\n")
    hashes = {s.name: s.sha256 for s in result.shards}
    for name in (MANIFEST, REJECTS, UNSELECTED, CARD, CROISSANT):
        hashes[name] = sha256_file(out / name)
    atomic.write_text(out / SUMS, sums_text(hashes))
    return manifest


# --- dataset card -------------------------------------------------------------------------------

_HOW = {
    "deeplesion": (
        "Each sample is a {crop}x{crop} crop around a DeepLesion RECIST mark (key slice, HU = PNG value - "
        "32768). The CT is windowed (level {window_level_hu} HU, width {window_width_hu} HU) to [0, 1]; GrabCut "
        "({grabcut_iterations} iterations) seeded by the RECIST axes gives a lesion mask; eroding and dilating "
        "it by {recist_band_px} px gives the trimap (strategy 3); closed-form matting (epsilon {eps}, window radius "
        "{radius}) solves the unknown band for the Soft Mask{deblur}. `binary_mask` is the Soft Mask "
        "thresholded at 0.5."),
    "lidc": (
        "Each sample is a {crop}x{crop} crop around an LIDC-IDRI nodule slice marked by several readers. The "
        "trimap's lesion region is the readers' intersection and its background the outside of their union "
        "(strategy 2, Eqs. 2-4); the CT is windowed (level {window_level_hu} HU, width {window_width_hu} HU) and "
        "closed-form matting (epsilon {eps}, radius {radius}) gives the Soft Mask{deblur}. `binary_mask` is the "
        "{consensus_pct:g} % reader consensus; `n_readers` counts the readers."),
    "masks": (
        "Each sample is a {crop}x{crop} crop with a given binary mask; eroding and dilating the mask by {band_px} "
        "px gives the trimap (strategy 1), and closed-form matting (epsilon {eps}, radius {radius}, window level "
        "{window_level_hu} HU, width {window_width_hu} HU) gives the Soft Mask{deblur}. `binary_mask` is the given "
        "mask."),
}


#: The label paragraph of a volume build (issue 26), per source family.
_HOW_3D = {
    "lidc": (
        "Each sample is a {z}x{h}x{w} (z, row, col) CT volume crop at the scan's native spacing around an "
        "LIDC-IDRI nodule, with every reader's contours on every slice. The 3-D trimap's lesion region is the "
        "readers' intersection and its background the outside of their union (strategy 2, voxel by voxel); the "
        "CT is windowed (level {window_level_hu} HU, width {window_width_hu} HU) and 3-D closed-form matting "
        "(epsilon {eps}, (2*{radius}+1)^3 windows{iso}) gives the Soft Mask{deblur}. `binary_mask` is the "
        "{consensus_pct:g} % reader consensus volume; `n_readers` counts the readers."),
    "masks": (
        "Each sample is a {z}x{h}x{w} (z, row, col) volume crop at native spacing with a given binary mask "
        "volume; eroding and dilating the mask by a ball of {band_px} in-plane pixels gives the 3-D trimap "
        "(strategy 1), and 3-D closed-form matting (epsilon {eps}, (2*{radius}+1)^3 windows{iso}, window level "
        "{window_level_hu} HU, width {window_width_hu} HU) gives the Soft Mask{deblur}. `binary_mask` is the "
        "given mask."),
}


def how_volume_labels_were_made(family: str, crop_zrc, isotropic: bool, label_params: dict[str, Any]) -> str:
    """The card's paragraph on how the labels of a volume build were made (issue 26)."""
    p = dict(label_params)
    p["consensus_pct"] = 100.0 * p.get("consensus", 0.5)
    n_deblur = int(p.get("deblur_iterations", 0) or 0)
    p["deblur"] = "" if not n_deblur else (
        f", from which {n_deblur} projected Van Cittert step(s) per slice take out the in-plane scanner blur")
    p["iso"] = (", on near-isotropic voxels: resampled along z, matted, and averaged back to the original "
                "slices" if isotropic else ", on the original voxel grid")
    z, h, w = (int(v) for v in crop_zrc)
    return _HOW_3D["masks" if family == "masks" else "lidc"].format(z=z, h=h, w=w, **p)


def _citation_keys(manifest: dict[str, Any]) -> list[str]:
    """The card's citation keys (:func:`~softmask_builder.formats.metadata.citation_keys`: from what
    the build used, a phantom's LIDC shapes and real or synthetic backgrounds included)."""
    return citation_keys(manifest)


def how_labels_were_made(family: str, crop_px: int, label_params: dict[str, Any]) -> str:
    """The card's paragraph on how the labels of a ``family`` source were made, from its label
    parameters (those of builds before issue 27 lack ``recist_band_px`` and the deblurring)."""
    p = dict(label_params)
    p["consensus_pct"] = 100.0 * p.get("consensus", 0.5)
    p.setdefault("recist_band_px", p.get("band_px"))
    n_deblur = int(p.get("deblur_iterations", 0) or 0)
    p["deblur"] = "" if not n_deblur else (
        f", from which {n_deblur} projected Van Cittert step(s) take out the scanner blur (a Gaussian whose "
        "sigma is " + (f"{p['psf_sigma_px']:g} px" if p.get("psf_sigma_px") else
                       f"measured on each crop from the image's edge, {p.get('psf_sigma_fallback_px'):g} px "
                       "where it cannot be") + "; docs/ACCURACY.md)")
    return _HOW[family].format(crop=crop_px, **p)


def dataset_card(manifest: dict[str, Any], rejects) -> str:
    """Markdown dataset card: the Hub's YAML front matter (licence, per-split ``data_files``,
    features), composition, how labels were made (with parameters), sources, citations."""
    recipe = manifest["recipe"]
    source = recipe["source"]
    family = source_family(manifest)
    lines = [hub_front_matter(manifest) + f"# {manifest['dataset']} {manifest['dataset_version']}", ""]
    if recipe.get("description"):
        lines += [recipe["description"].strip(), ""]
    lines += [
        f"Built by softmask_builder {manifest['builder_version']} from source adapter `{source}` "
        f"(recipe sha256 `{manifest['recipe_sha256']}`), shard schema version {manifest['schema_version']} "
        "(see docs/FORMAT.md).", "",
        "## Composition", "",
        "| split | samples | patients | shards | planned |", "|---|---|---|---|---|",
    ]
    for split, c in manifest["splits"].items():
        lines.append(f"| {split} | {c['n_samples']} | {c['n_patients']} | {c['n_shards']} | {c['n_planned']} |")
    lines.append(f"| **total** | {manifest['n_samples']} | | {len(manifest['shards'])} | {manifest['n_planned']} |")
    split = recipe["split"]
    if split["method"] == "official":
        how_split = "the source's official split"
    else:
        target = split["counts"] if split.get("counts") is not None else split["fractions"]
        ordered = ", ".join(f"{k} {target[k]}" for k in ("train", "val", "test") if k in target)
        kind = "sample counts" if split.get("counts") is not None else "fractions"
        how_split = (f"a deterministic split by patient (seed {split['seed']}, target {kind}: {ordered}); "
                     "no patient appears in two splits")
    by_filter = manifest.get("unselected_by_filter") or {}
    left_out = f" ({', '.join(f'{k}: {v}' for k, v in by_filter.items())}; listed in `{UNSELECTED}`)" if by_filter else ""
    lines += ["", f"Splits: {how_split}. Samples left out by a selection filter, the targets or a `--limit`: "
                  f"{manifest['n_unselected']}{left_out}. Rejected samples: {manifest['n_rejects']} "
                  f"({', '.join(f'{k}: {v}' for k, v in manifest['rejects_by_stage'].items()) or 'none'}), "
                  f"listed with their reasons in `{REJECTS}`."]
    if manifest.get("warnings"):
        lines += ["", "**Warnings:**", ""] + [f"- {w}" for w in manifest["warnings"]]
    if rejects:
        reasons: dict[str, int] = {}
        for r in rejects:
            key = f"{r.stage}: {r.reason.split(':')[0][:80]}"
            reasons[key] = reasons.get(key, 0) + 1
        top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        lines += ["", "Most common reject reasons:", ""] + [f"- {n} x {k}" for k, n in top]
    if manifest["kind"] == "slices":
        lines += ["", "## Content", "",
                  "Full axial CT slices in HU (int16) for the super-resolution teacher; no labels."]
    elif manifest["kind"] == "volumes":
        volume = recipe["volume"]
        lines += ["", "## How the labels were made", "",
                  how_volume_labels_were_made(family, volume["crop_zrc"], volume["isotropic"],
                                              manifest["label_params"]), "",
                  "Every array is (N, Z, H, W) in (z, row, col); `spacing_mm`, `origin_px` and `scale` are per axis "
                  "(z, row, col); docs/FORMAT.md, \"Volume shards\".", "",
                  "Label parameters (LabelParams, stored in every shard as `label_params_json`):", "", "```json",
                  json.dumps(manifest["label_params"], indent=1, sort_keys=True), "```"]
    else:
        lines += ["", "## How the labels were made", "",
                  how_labels_were_made(family, recipe["crop_px"], manifest["label_params"]), "",
                  "Label parameters (LabelParams, stored in every shard as `label_params_json`):", "", "```json",
                  json.dumps(manifest["label_params"], indent=1, sort_keys=True), "```"]
    if family == "deeplesion" and manifest["kind"] == "samples":
        lines += ["", "DeepLesion caveat: `Coarse_lesion_type` is labelled only on the official validation and "
                      "test rows; every training-split row is -1 (unlabelled). A selection by lesion type "
                      "(e.g. lung = 5) therefore draws only from the official val/test rows, and this "
                      "dataset's train/val/test split is its own patient split, not DeepLesion's."]
    lines += ["", "## Sources and citations", ""]
    lines += [f"- {CITATIONS[k]}" for k in _citation_keys(manifest)]
    lines += [f"- Licence of this build: {licence(manifest)[3]}."]
    if family == "masks":
        lines += ["- The images and masks come from the user-supplied folder; their licence applies."]
    lines += ["", "## Files and verification", "",
              f"`{MANIFEST}` lists every shard with its SHA-256 and sample count; `{SUMS}` covers the shards and "
              f"the release files (`sha256sum -c {SUMS}`); `softmask verify <folder>` re-hashes and checks the "
              "schema and counts. `croissant.json` is the Croissant 1.1 metadata (each shard with its sha256 "
              "and size, the record fields).", "",
              "## Loading", "",
              "`datasets.load_dataset(\"hdf5\", data_files=...)` reads every field (the `configs` above list "
              "each split's shards); `softmask export nnunet|monai` hands the build to nnU-Net v2 or MONAI.", "",
              "Library versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()) + ".", ""]
    return "\n".join(lines)


# --- verification -------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: ``ok`` when ``problems`` is empty."""

    out: Path
    problems: list[str] = field(default_factory=list)
    n_shards: int = 0
    n_samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "ok": self.ok, "n_shards": self.n_shards, "n_samples": self.n_samples,
                "problems": list(self.problems)}


def check_release_index(out: str | Path) -> dict[str, Any]:
    """The build folder's ``manifest.json``, after checking that it and ``SHA256SUMS`` are intact
    enough to be read: the manifest is a JSON object with ``dataset`` (str), ``kind`` (str,
    if present), ``n_samples`` (int, if present) and ``shards`` (a list of objects with ``file``/``split`` str and
    ``n_samples`` int); ``SHA256SUMS`` (if present) is UTF-8 text whose every line is
    ``<sha256>  <file>`` and lists at least one file.

    Every command that reads a built folder calls this first, so a damaged index is one line with
    exit 3 (the CLIs map :class:`ManifestError` to ``EXIT_VERIFY``), never a traceback.

    Raises
    ------
    ManifestError
        Naming the file and the first defect.
    """
    out = Path(out)
    manifest = read_manifest(out)
    for key, kind in (("dataset", str), ("kind", str), ("n_samples", int), ("shards", list)):
        if key in ("kind", "n_samples") and key not in manifest:
            continue  # optional in the oldest readable manifests
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ManifestError(f"{out / MANIFEST}: field {key!r} is missing or not a {kind.__name__} "
                                f"(got {manifest.get(key)!r:.60})")
    for i, entry in enumerate(manifest["shards"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("split"), str)
                and isinstance(entry.get("n_samples"), int)):
            raise ManifestError(f"{out / MANIFEST}: shards[{i}] lacks or mistypes file/split/n_samples")
    path = out / SUMS
    if path.exists():
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is damaged: not readable UTF-8 text ({type(exc).__name__})") from None
        entries, bad = parse_sums(text)
        if bad:
            raise ManifestError(f"{path} is damaged: {bad[0]}")
        if not entries:
            raise ManifestError(f"{path} is damaged: it lists no file")
    return manifest


def verify(out: str | Path) -> VerifyReport:
    """Re-hash and check a built dataset folder.

    Checks: ``manifest.json`` and ``SHA256SUMS`` exist and parse; every file in ``SHA256SUMS`` has
    that hash; every shard of the manifest is listed there, has the manifest's hash, conforms to
    the schema (:func:`~softmask_builder.formats.shards.check_shard`), carries the manifest's dataset,
    split and recipe hash, and holds the manifest's sample count; each split has shards 0..n-1 of
    n; per-split and total counts add up; no patient appears in two splits; no sample_id appears
    in two shards; every shard's ``kind`` (and the kind its file name says) is the manifest's; every shard's values pass
    :func:`~softmask_builder.formats.shards.check_shard_values` (finite, in-range meta fields;
    ``binary_mask`` consistent with its source's rule); no stray shard of the dataset lies in the
    folder; ``rejects.csv`` has ``n_rejects`` rows.
    """
    out = Path(out)
    report = VerifyReport(out)
    problems = report.problems
    if not out.is_dir():
        problems.append(f"{out} is not a folder")
        return report
    try:
        manifest = read_manifest(out)
    except ManifestError as exc:
        problems.append(str(exc))
        return report
    try:
        sums, bad = parse_sums((out / SUMS).read_text(encoding="utf-8"))
        problems.extend(bad)
    except UnicodeDecodeError:
        problems.append(f"{SUMS} is damaged: not UTF-8 text")
        sums = {}
    except FileNotFoundError:
        problems.append(f"{SUMS} is missing")
        sums = {}
    hashes: dict[str, str | None] = {}

    def digest(name: str) -> str | None:
        if name not in hashes:
            path = out / name
            hashes[name] = sha256_file(path) if path.is_file() else None
        return hashes[name]

    for name, expected in sorted(sums.items()):
        got = digest(name)
        if got is None:
            problems.append(f"{name} is listed in {SUMS} but missing")
        elif got != expected:
            problems.append(f"{name}: sha256 {got[:16]}... does not match {SUMS} ({expected[:16]}...)")
    for name in (MANIFEST, REJECTS, CARD) + ((CROISSANT,) if manifest.get("schema_version", 1) >= 2 else ()):
        if name not in sums:
            problems.append(f"{name} is not listed in {SUMS}")

    try:
        dataset, shards = manifest["dataset"], manifest["shards"]
        recipe_sha = manifest["recipe_sha256"]
        schema_version = manifest.get("schema_version")
        if schema_version not in READABLE_VERSIONS:
            problems.append(f"manifest schema_version {schema_version!r}, expected one of {list(READABLE_VERSIONS)}")
        split_samples: dict[str, int] = {}
        split_counts: dict[str, list[tuple[int, int]]] = {}
        patients: dict[str, set[str]] = {}
        id_shards: dict[str, list[str]] = {}  # sample_id -> the shards holding it
        for entry in shards:
            name = entry["file"]
            report.n_shards += 1
            got = digest(name)
            if got is None:
                problems.append(f"shard {name} is missing")
                continue
            if got != entry["sha256"]:
                problems.append(f"shard {name}: sha256 {got[:16]}... does not match the manifest")
            if sums.get(name) is None:
                problems.append(f"shard {name} is not listed in {SUMS}")
            schema = check_shard(out / name)
            problems.extend(schema)
            if schema:
                continue
            parsed = parse_shard_name(name)
            want_kind = manifest.get("kind")  # absent in the oldest manifests: not checked there
            try:
                with open_shard(out / name) as shard:
                    if want_kind is not None and shard.kind != want_kind:
                        problems.append(f"shard {name}: kind {shard.kind!r}, manifest says {want_kind!r}")
                    attrs = shard.attrs
                    n = shard.n_samples
                    shard_patients = set(shard.meta_column("patient"))
                    shard_ids = list(shard.sample_ids)
                    if shard.schema_version != schema_version:
                        problems.append(f"shard {name}: schema_version {shard.schema_version}, manifest says "
                                        f"{schema_version}")
                problems.extend(check_shard_values(out / name))  # meta ranges, binary_mask rule
            except (SoftMaskError, OSError, RuntimeError, ValueError) as exc:
                problems.append(f"shard {name}: unreadable ({exc})")
                continue
            for sid in shard_ids:
                id_shards.setdefault(sid, []).append(name)
            for key, want in (("dataset", dataset), ("split", entry["split"]), ("recipe_sha256", recipe_sha)):
                if attrs.get(key) != want:
                    problems.append(f"shard {name}: attribute {key} {attrs.get(key)!r}, manifest says {want!r}")
            if parsed is None or (parsed.split, parsed.index, parsed.count, parsed.kind) != (
                    entry["split"], entry["index"], entry["count"], want_kind or parsed.kind):
                problems.append(f"shard {name}: file name does not match its manifest entry")
            if n != entry["n_samples"]:
                problems.append(f"shard {name}: {n} samples, manifest says {entry['n_samples']}")
            report.n_samples += n
            split_samples[entry["split"]] = split_samples.get(entry["split"], 0) + n
            split_counts.setdefault(entry["split"], []).append((entry["index"], entry["count"]))
            patients.setdefault(entry["split"], set()).update(shard_patients)
        for split, pairs in split_counts.items():
            counts = {c for _, c in pairs}
            if len(counts) != 1 or sorted(i for i, _ in pairs) != list(range(next(iter(counts)))):
                problems.append(f"split {split}: shards {sorted(pairs)} are not 0..n-1 of n")
        if not problems:  # counts only add up when every shard was readable
            for split in sorted(set(manifest["splits"]) | set(split_samples)):
                want = manifest["splits"].get(split, {}).get("n_samples", 0)
                if split_samples.get(split, 0) != want:
                    problems.append(f"split {split}: {split_samples.get(split, 0)} samples, manifest says {want}")
            if report.n_samples != manifest["n_samples"]:
                problems.append(f"{report.n_samples} samples in the shards, manifest says {manifest['n_samples']}")
        repeated = sorted(sid for sid, where in id_shards.items() if len(where) > 1)
        if repeated:
            problems.append(f"sample_id in several shards: {repeated[:3]} (e.g. {repeated[0]} in "
                            f"{', '.join(id_shards[repeated[0]])})")
        names = sorted(patients)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = patients[a] & patients[b]
                if shared:
                    problems.append(f"patients in both {a} and {b}: {sorted(shared)[:5]}")
        listed = {e["file"] for e in shards}
        for p in sorted(out.iterdir()):
            parsed = parse_shard_name(p.name)
            if parsed is not None and parsed.dataset == dataset and p.name not in listed:
                problems.append(f"stray shard {p.name} is not in the manifest")
        try:
            with open(out / REJECTS, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            if not rows or rows[0] != REJECTS_HEADER:
                problems.append(f"{REJECTS} lacks the header sample_id,stage,reason")
            elif len(rows) - 1 != manifest["n_rejects"]:
                problems.append(f"{REJECTS} has {len(rows) - 1} rows, manifest says {manifest['n_rejects']}")
        except FileNotFoundError:
            problems.append(f"{REJECTS} is missing")
        if UNSELECTED in sums and (out / UNSELECTED).is_file():  # older datasets have none
            with open(out / UNSELECTED, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            if not rows or rows[0] != UNSELECTED_HEADER:
                problems.append(f"{UNSELECTED} lacks the header {','.join(UNSELECTED_HEADER)}")
            elif len(rows) - 1 != manifest["n_unselected"]:
                problems.append(f"{UNSELECTED} has {len(rows) - 1} rows, manifest says {manifest['n_unselected']}")
    except (KeyError, TypeError) as exc:
        problems.append(f"{MANIFEST} lacks or mistypes a field: {exc!r}")
    return report


__all__ = ["write_release", "verify", "VerifyReport", "write_preview", "preview_report", "dataset_card", "manifest_dict",
           "library_versions"]
