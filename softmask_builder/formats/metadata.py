"""Machine-readable metadata of a build: the Hugging Face Hub front matter of ``DATASET_CARD.md``
and ``croissant.json`` (Croissant 1.1 JSON-LD). Pure functions of the manifest (no clock, no
paths), so that rebuilding gives the same bytes.

Both describe the shard layout that :mod:`softmask_builder.formats.shards` owns (schema 2 and later: every array
and meta field is an (N, ...) dataset), taken from :func:`~softmask_builder.formats.shards.layout`, so a
schema change shows here without a second copy of the field list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from softmask_builder.formats.shards import layout, optional_arrays

#: Licence of each part a build can draw on: (Hub licence id, licence name, link, one-line statement).
#: "synthetic" is this project's own phantom anatomy (Apache-2.0, as the toolkit).
LICENCES = {
    "lidc": ("cc-by-3.0", "CC BY 3.0", "https://creativecommons.org/licenses/by/3.0/",
             "LIDC-IDRI (The Cancer Imaging Archive): Creative Commons Attribution 3.0 Unported"),
    "deeplesion": ("other", "NIH Clinical Center DeepLesion terms", "https://nihcc.app.box.com/v/DeepLesion",
                   "DeepLesion (NIH Clinical Center): use under the NIH Clinical Center's DeepLesion terms"),
    "masks": ("other", "licence of the user-supplied source", None,
              "the user-supplied images and masks: their own licence applies"),
    "synthetic": ("apache-2.0", "Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0",
                  "synthetic images of the Soft Mask toolkit's phantom: Apache-2.0, as the toolkit"),
}

#: Citations of each part, and of the method; markdown (``**``) as the dataset card shows them.
CITATIONS = {
    "deeplesion": (
        "**DeepLesion** (NIH Clinical Center). Acknowledge the NIH Clinical Center and cite: Yan K., Wang X., "
        "Lu L., Summers R. M., \"DeepLesion: automated mining of large-scale lesion annotations and universal "
        "lesion detection with deep learning\", J. Med. Imaging 5(3):036501 (2018). Use follows the NIH "
        "Clinical Center's DeepLesion terms."),
    "lidc": (
        "**LIDC-IDRI** (The Cancer Imaging Archive), licence CC BY 3.0. Cite: Armato III S. G. et al., Data From "
        "LIDC-IDRI, TCIA, doi:10.7937/K9/TCIA.2015.LO9QL9SX; Armato III S. G. et al., Med. Phys. 38:915-931 "
        "(2011); Clark K. et al., \"The Cancer Imaging Archive (TCIA)\", J. Digit. Imaging 26:1045-1057 (2013)."),
    "synthetic": (
        "**Synthetic phantom** (the Soft Mask toolkit's `softmask phantom`, Apache-2.0): the images are "
        "rendered, not scanned; no patient data."),
    "method": (
        "**Soft Mask labels**: Wang, Xu et al., DSNet, IEEE Transactions on Neural Networks and Learning "
        "Systems (TNNLS), 2023, Sec. III-A; closed-form matting: Levin A., Lischinski D., Weiss Y., \"A "
        "closed-form solution to natural image matting\", IEEE TPAMI 30(2):228-242 (2008)."),
    "grabcut": "**GrabCut** (RECIST priors): Rother C., Kolmogorov V., Blake A., ACM TOG 23(3):309-314 (2004).",
}

#: The marker file ``softmask phantom`` writes into a phantom source folder.
PHANTOM_MARKER = "phantom.json"

_HF_DTYPE = {"i2": "int16", "u1": "uint8", "f4": "float32"}
_CR_DTYPE = {"i2": "cr:Int16", "u1": "cr:UInt8", "f4": "cr:Float32", "S": "sc:Text"}


def source_family(manifest: dict[str, Any]) -> str:
    """The source adapter's family ("lidc", "masks" or "deeplesion"): how the labels were made.
    A phantom sample is read by the DeepLesion adapter, so its family is "deeplesion"; what its
    pixels are made of is :func:`data_parts`."""
    source = manifest["recipe"]["source"]
    return "lidc" if source.startswith("lidc") else ("masks" if source == "masks" else "deeplesion")


def phantom_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """What a phantom source is made of, from its ``phantom.json`` record (pure; no path kept, so the
    manifest stays the same wherever the source lies).

    Returns ``{"phantom": "hybrid"|"analytic", "shapes": "lidc"|"analytic", "backgrounds": [...]}``,
    backgrounds a sorted list of "synthetic", "lidc", "deeplesion" (the real slices' sources).
    """
    kind = str(record.get("kind") or "analytic")
    if kind != "hybrid":
        return {"phantom": kind, "shapes": "analytic", "backgrounds": ["synthetic"]}
    bg = record.get("backgrounds") or {}
    if isinstance(bg, dict) and bg.get("kind") == "real":
        parts = sorted({str(s.get("source")) for s in bg.get("sources", []) if s.get("source") in ("lidc", "deeplesion")})
        backgrounds = parts or ["synthetic"]
    else:
        backgrounds = ["synthetic"]
    return {"phantom": "hybrid", "shapes": "lidc", "backgrounds": backgrounds}


def read_source_provenance(source: str | Path) -> dict[str, Any] | None:
    """:func:`phantom_provenance` of ``source/phantom.json`` when ``source`` is a phantom sample
    folder; None for a real source (or an unreadable marker: then the source is taken as real)."""
    if not source:
        return None
    marker = Path(source) / PHANTOM_MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return phantom_provenance(record) if isinstance(record, dict) else None


def data_parts(manifest: dict[str, Any]) -> list[str]:
    """Which licensed parts the build's pixels and outlines come from, in a fixed order: a real
    source's family, or for a phantom (``manifest["provenance"]``) its shapes' and backgrounds'
    sources ("lidc", "deeplesion", "synthetic"). Manifests without ``provenance`` (older builds)
    are taken as real."""
    prov = manifest.get("provenance")
    if not prov:
        return [source_family(manifest)]
    used = set(prov.get("backgrounds") or ["synthetic"])
    used.add("lidc" if prov.get("shapes") == "lidc" else "synthetic")
    return [p for p in ("lidc", "deeplesion", "masks", "synthetic") if p in used]


def licence(manifest: dict[str, Any]) -> tuple[str, str, str | None, str]:
    """(Hub licence id, name, link, statement) of the build, from :func:`data_parts`. Synthetic
    parts (Apache-2.0) add no condition beside a real part, so they only join the statement; two
    real parts give licence "other" named after both."""
    parts = data_parts(manifest)
    real = [p for p in parts if p != "synthetic"] or ["synthetic"]
    statement = "; ".join(LICENCES[p][3] for p in parts)
    if len(real) == 1:
        hub_id, name, link, _ = LICENCES[real[0]]
        return hub_id, name, link, statement
    return "other", " and ".join(LICENCES[p][1] for p in real), None, statement


def citation_keys(manifest: dict[str, Any]) -> list[str]:
    """Keys of :data:`CITATIONS` that the build must cite: its data parts, then (sample builds) the
    Soft Mask method and, where RECIST marks seed the labels (DeepLesion adapter), GrabCut."""
    keys = [p for p in data_parts(manifest) if p in ("lidc", "deeplesion", "synthetic")]
    if manifest["kind"] in ("samples", "volumes"):
        keys += ["method"] + (["grabcut"] if source_family(manifest) == "deeplesion" else [])
    return keys


def citation_text(manifest: dict[str, Any]) -> str:
    """The build's citations as plain text (Croissant's ``citeAs``, the exports' metadata)."""
    return "\n".join(CITATIONS[k].replace("**", "") for k in citation_keys(manifest))


def _fields(manifest: dict[str, Any]) -> list[tuple[str, np.dtype, tuple[int, ...] | None]]:
    """(name, dtype, per-sample shape) of every dataset of the build's shards, in file (sorted) order.
    The image arrays' shape is (crop, crop) for sample builds, the recipe's ``volume.crop_zrc``
    (Z, H, W) for volume builds and None (varies) for slice builds."""
    arrays, meta = layout(manifest["kind"])
    crop = manifest["recipe"].get("crop_px")
    hw = (int(crop), int(crop)) if manifest["kind"] == "samples" and crop else None
    if manifest["kind"] == "volumes":
        hw = tuple(int(d) for d in manifest["recipe"]["volume"]["crop_zrc"])
    out = [(name, dtype, hw) for name, dtype in arrays.items()]
    # schema 3's optional arrays the build's shards carry (manifest "optional_arrays", phantom truth)
    optional = optional_arrays(manifest["kind"])
    out += [(name, optional[name], hw) for name in manifest.get("optional_arrays", ())]
    out += [(name, meta[name].base if meta[name].kind != "S" else meta[name], meta[name].shape) for name in meta.names]
    return sorted(out, key=lambda f: f[0])


def _split_files(manifest: dict[str, Any]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for e in sorted(manifest["shards"], key=lambda e: (e["split"], e["index"])):
        files.setdefault(e["split"], []).append(e["file"])
    return {s: files[s] for s in ("train", "val", "test") if s in files}


def hub_features(manifest: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``dataset_info.features`` list (Hub YAML) that ``datasets`` infers from the shards
    (``array2_d`` per crop of a sample build, ``array3_d`` per volume of a volume build); None for
    slice builds (their slice size may differ between shards)."""
    if manifest["kind"] not in ("samples", "volumes"):
        return None
    out = []
    for name, dtype, shape in _fields(manifest):
        if dtype.kind == "S":
            out.append({"name": name, "dtype": "string"})
            continue
        hf = _HF_DTYPE[dtype.str[1:]]
        if not shape:
            out.append({"name": name, "dtype": hf})
        elif len(shape) == 1:
            out.append({"name": name, "list": hf, "length": int(shape[0])})
        else:
            key = "array2_d" if len(shape) == 2 else "array3_d"
            out.append({"name": name, "dtype": {key: {"shape": [int(d) for d in shape], "dtype": hf}}})
    return out


def hub_front_matter(manifest: dict[str, Any]) -> str:
    """YAML front matter of the dataset card, as the Hugging Face Hub reads it: licence, one
    ``default`` config whose ``data_files`` list each split's shards (loaded by the ``hdf5``
    builder), the features, tags. Written by hand (no YAML library), keys in a fixed order."""
    hub_id, name, link, _ = licence(manifest)
    lines = ["---", f"pretty_name: {json.dumps(manifest['dataset'] + ' ' + str(manifest['dataset_version']))}",
             f"license: {hub_id}"]
    if hub_id == "other":
        lines.append(f"license_name: {json.dumps(name)}")
        if link:
            lines.append(f"license_link: {link}")
    lines += ["tags:", "- medical", "- ct", "- lung-nodule", "- segmentation", "- soft-labels",
              "task_categories:", "- image-segmentation",
              "configs:", "- config_name: default", "  data_files:"]
    for split, files in _split_files(manifest).items():
        lines += [f"  - split: {split}", "    path:"] + [f"    - {f}" for f in files]
    features = hub_features(manifest)
    if features:
        lines += ["dataset_info:", "  features:"]
        for f in features:
            lines.append(f"  - name: {f['name']}")
            if "list" in f:
                lines += [f"    list: {f['list']}", f"    length: {f['length']}"]
            elif isinstance(f["dtype"], dict):
                (key, arr), = f["dtype"].items()
                lines += ["    dtype:", f"      {key}:", "        shape:"] + [f"        - {d}" for d in arr["shape"]]
                lines.append(f"        dtype: {arr['dtype']}")
            else:
                lines.append(f"    dtype: {f['dtype']}")
        lines += ["  splits:"] + [f"  - name: {s}\n    num_examples: {c['n_samples']}"
                                  for s, c in manifest["splits"].items() if s in _split_files(manifest)]
    lines += ["---", ""]
    return "\n".join(lines)


def croissant(manifest: dict[str, Any], *, cite_as: str) -> dict[str, Any]:
    """``croissant.json``: the dataset, each shard as a ``cr:FileObject`` (sha256, size), a
    ``cr:FileSet`` over them and one record set whose fields are the shard datasets (arrays with
    ``isArray``/``arrayShape``). Croissant 1.1; validated with ``mlcroissant`` in the tests
    (mlcroissant has no HDF5 reader, so records themselves are not read through it).
    ``cite_as`` is the plain-text citation (the card's "Sources and citations")."""
    _, licence_name, link, statement = licence(manifest)
    dataset = manifest["dataset"]
    distribution: list[dict[str, Any]] = []
    for e in sorted(manifest["shards"], key=lambda e: e["file"]):
        distribution.append({"@type": "cr:FileObject", "@id": e["file"], "name": e["file"],
                             "description": f"{e['split']} shard {e['index']} of {e['count']} "
                                            f"({e['n_samples']} samples)",
                             "contentUrl": e["file"], "encodingFormat": "application/x-hdf5",
                             "contentSize": f"{e['bytes']} B", "sha256": e["sha256"]})
    distribution.append({"@type": "cr:FileSet", "@id": "shards", "name": "shards",
                         "description": "The HDF5 shards (docs/FORMAT.md, schema 2: one (N, ...) dataset per field)",
                         "containedIn": [{"@id": e["file"]} for e in sorted(manifest["shards"], key=lambda e: e["file"])],
                         "encodingFormat": "application/x-hdf5", "includes": f"{dataset}-*.h5"})
    fields = []
    for name, dtype, shape in _fields(manifest):
        field: dict[str, Any] = {"@type": "cr:Field", "@id": f"samples/{name}", "name": name,
                                 "dataType": _CR_DTYPE["S" if dtype.kind == "S" else dtype.str[1:]],
                                 "source": {"fileSet": {"@id": "shards"}, "extract": {"column": name}}}
        if shape is None or shape:
            field["isArray"] = True
            field["arrayShape"] = ",".join(str(d) for d in shape) if shape else "-1,-1"
        fields.append(field)
    out = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.1",
        "name": dataset,
        "description": (f"{dataset} {manifest['dataset_version']}: Soft Mask labels (trimap + closed-form "
                        f"matting) for lesion {'volume crops (3-D)' if manifest['kind'] == 'volumes' else 'crops'}, built by softmask_builder {manifest['builder_version']} "
                        f"(recipe sha256 {manifest['recipe_sha256']}). Licence: {statement}."),
        "version": _semver(manifest["dataset_version"]),
        "license": link or licence_name,
        "citeAs": cite_as,
        "distribution": distribution,
        "recordSet": [{"@type": "cr:RecordSet", "@id": "samples", "name": "samples",
                       "description": ("One record per sample (a 3-D crop in (z, row, col)) across every shard"
                                       if manifest["kind"] == "volumes" else
                                       "One record per sample (a crop or a slice) across every shard"),
                       "key": {"@id": "samples/sample_id"}, "field": fields}],
    }
    return out


def _semver(version: str) -> str:
    parts = str(version).split(".")
    parts = (parts + ["0", "0", "0"])[:3] if all(p.isdigit() for p in parts) else ["0", "0", "0"]
    return ".".join(parts)


#: The Croissant 1.1 JSON-LD context (as mlcroissant's ``make_context`` writes it for 1.1).
CONTEXT = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
