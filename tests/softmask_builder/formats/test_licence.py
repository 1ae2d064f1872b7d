"""Licence and citations follow what a build used (issue 24): the source adapter for real data,
and for a phantom sample its LIDC-IDRI shapes and its real or synthetic backgrounds, in the card's
front matter and body, ``croissant.json`` and the exports' metadata. The expected licences are
written out by hand from the sources' own terms (LIDC-IDRI: CC BY 3.0; DeepLesion: the NIH
Clinical Center's terms; the phantom's anatomy: this project's Apache-2.0)."""

from __future__ import annotations

import json

import pytest

from softmask_builder.dataset.release import dataset_card
from softmask_builder.formats.metadata import croissant, citation_text, phantom_provenance, read_source_provenance
from tests.softmask_builder.dataset.test_release import _front_matter, built  # noqa: F401 (fixture)

_SYNTH = {"kind": "synthetic", "license": "synthetic"}
_REAL_LIDC = {"kind": "real", "sources": [{"source": "lidc", "license": "LIDC-IDRI (TCIA), CC BY 3.0"}]}
_REAL_DL = {"kind": "real", "sources": [{"source": "deeplesion", "license": "DeepLesion terms"}]}

# (source adapter, phantom.json record or None for real data) -> (Hub id, licence_name, Croissant
# licence, citations that must appear, citations that must not).
CASES = {
    "lidc": ("lidc", None, "cc-by-3.0", None, "https://creativecommons.org/licenses/by/3.0/",
             ["Armato"], ["DeepLesion", "GrabCut", "Synthetic phantom"]),
    "lidc_slices": ("lidc_slices", None, "cc-by-3.0", None, "https://creativecommons.org/licenses/by/3.0/",
                    ["Armato"], ["DeepLesion", "Synthetic phantom"]),
    "deeplesion": ("deeplesion", None, "other", "NIH Clinical Center DeepLesion terms",
                   "https://nihcc.app.box.com/v/DeepLesion", ["Yan K.", "GrabCut"], ["Armato", "Synthetic phantom"]),
    "masks": ("masks", None, "other", "licence of the user-supplied source", "licence of the user-supplied source",
              ["Levin A."], ["Armato", "Yan K.", "GrabCut"]),
    "hybrid phantom, synthetic backgrounds": (
        "deeplesion", {"kind": "hybrid", "backgrounds": _SYNTH}, "cc-by-3.0", None,
        "https://creativecommons.org/licenses/by/3.0/", ["Armato", "Synthetic phantom", "GrabCut"], ["Yan K."]),
    "hybrid phantom, LIDC backgrounds": (
        "deeplesion", {"kind": "hybrid", "backgrounds": _REAL_LIDC}, "cc-by-3.0", None,
        "https://creativecommons.org/licenses/by/3.0/", ["Armato"], ["Yan K.", "Synthetic phantom"]),
    "hybrid phantom, DeepLesion backgrounds": (
        "deeplesion", {"kind": "hybrid", "backgrounds": _REAL_DL}, "other",
        "CC BY 3.0 and NIH Clinical Center DeepLesion terms",
        "CC BY 3.0 and NIH Clinical Center DeepLesion terms", ["Armato", "Yan K."], ["Synthetic phantom"]),
    "analytic phantom": (
        "deeplesion", {"kind": "analytic", "shapes": "analytic (softmask_builder.phantom)", "backgrounds": "synthetic"},
        "apache-2.0", None, "https://www.apache.org/licenses/LICENSE-2.0", ["Synthetic phantom"],
        ["Armato", "Yan K.", "DeepLesion terms"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_licence_and_citations_follow_what_the_build_used(built, case):  # noqa: F811
    source, record, hub_id, hub_name, cr_licence, cited, not_cited = CASES[case]
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["recipe"]["source"] = source
    if record is not None:
        manifest["provenance"] = phantom_provenance(record)
    card = dataset_card(manifest, [])
    meta = _front_matter(card)
    assert meta["license"] == hub_id and meta.get("license_name") == hub_name, case
    doc = croissant(manifest, cite_as=citation_text(manifest))
    assert doc["license"] == cr_licence, case
    citations = card[card.index("## Sources and citations"):card.index("## Files and verification")]
    for text in cited:
        assert text in citations and text in doc["citeAs"], (case, text)
    for text in not_cited:
        assert text not in citations and text not in doc["citeAs"] and text not in doc["description"], (case, text)


def test_provenance_is_read_from_the_phantom_marker_without_paths(tmp_path):
    """The manifest's provenance comes from phantom.json and keeps no path (same bytes anywhere)."""
    assert read_source_provenance(tmp_path) is None  # a real source has no marker
    (tmp_path / "phantom.json").write_text(json.dumps({"kind": "hybrid", "backgrounds_dir": str(tmp_path),
                                                       "backgrounds": _REAL_LIDC}))
    prov = read_source_provenance(tmp_path)
    assert prov == {"phantom": "hybrid", "shapes": "lidc", "backgrounds": ["lidc"]}
    assert str(tmp_path) not in json.dumps(prov)
