"""Machine-readable metadata of a build: the Hugging Face Hub front matter of ``DATASET_CARD.md``
and ``croissant.json`` (Croissant 1.1 JSON-LD). Pure functions of the manifest (no clock, no
paths), so that rebuilding gives the same bytes.

Both describe the shard layout that :mod:`softmask_builder.formats.shards` owns (schema 2: every array
and meta field is an (N, ...) dataset), taken from :func:`~softmask_builder.formats.shards.layout`, so a
schema change shows here without a second copy of the field list.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from softmask_builder.formats.shards import layout, optional_arrays

#: Licence of each source family: (Hub licence id, licence name, link, one-line statement).
LICENCES = {
    "lidc": ("cc-by-3.0", "CC BY 3.0", "https://creativecommons.org/licenses/by/3.0/",
             "LIDC-IDRI (The Cancer Imaging Archive): Creative Commons Attribution 3.0 Unported"),
    "deeplesion": ("other", "NIH Clinical Center DeepLesion terms", "https://nihcc.app.box.com/v/DeepLesion",
                   "DeepLesion (NIH Clinical Center): use under the NIH Clinical Center's DeepLesion terms"),
    "masks": ("other", "licence of the user-supplied source", None,
              "the user-supplied images and masks: their own licence applies"),
}

_HF_DTYPE = {"i2": "int16", "u1": "uint8", "f4": "float32"}
_CR_DTYPE = {"i2": "cr:Int16", "u1": "cr:UInt8", "f4": "cr:Float32", "S": "sc:Text"}


def source_family(manifest: dict[str, Any]) -> str:
    source = manifest["recipe"]["source"]
    return "lidc" if source.startswith("lidc") else ("masks" if source == "masks" else "deeplesion")


def _fields(manifest: dict[str, Any]) -> list[tuple[str, np.dtype, tuple[int, ...] | None]]:
    """(name, dtype, per-sample shape) of every dataset of the build's shards, in file (sorted) order.
    The image arrays' shape is (crop, crop) for sample builds and None (varies) for slice builds."""
    arrays, meta = layout(manifest["kind"])
    crop = manifest["recipe"].get("crop_px")
    hw = (int(crop), int(crop)) if manifest["kind"] == "samples" and crop else None
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
    """The ``dataset_info.features`` list (Hub YAML) that ``datasets`` infers from the shards;
    None for slice builds (their slice size may differ between shards)."""
    if manifest["kind"] != "samples":
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
            out.append({"name": name, "dtype": {"array2_d": {"shape": [int(d) for d in shape], "dtype": hf}}})
    return out


def hub_front_matter(manifest: dict[str, Any]) -> str:
    """YAML front matter of the dataset card, as the Hugging Face Hub reads it: licence, one
    ``default`` config whose ``data_files`` list each split's shards (loaded by the ``hdf5``
    builder), the features, tags. Written by hand (no YAML library), keys in a fixed order."""
    hub_id, name, link, _ = LICENCES[source_family(manifest)]
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
                arr = f["dtype"]["array2_d"]
                lines += ["    dtype:", "      array2_d:", "        shape:"] + [f"        - {d}" for d in arr["shape"]]
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
    family = source_family(manifest)
    _, licence_name, link, statement = LICENCES[family]
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
                        f"matting) for lesion crops, built by softmask_builder {manifest['builder_version']} "
                        f"(recipe sha256 {manifest['recipe_sha256']}). Licence: {statement}."),
        "version": _semver(manifest["dataset_version"]),
        "license": link or licence_name,
        "citeAs": cite_as,
        "distribution": distribution,
        "recordSet": [{"@type": "cr:RecordSet", "@id": "samples", "name": "samples",
                       "description": "One record per sample (a crop or a slice) across every shard",
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
