"""QC report and preview figures: the review picks equal an independent recomputation from the
labeller's own output, the page is self-contained and reproducible, the panels' helpers pick the
right pixels."""

from __future__ import annotations

import base64
import csv
import json
import re

import cv2
import numpy as np
import pytest

from softmask_builder.dataset.build import make_plan, run_build
from softmask_builder.errors import InputError
from softmask_builder.reports.figures import edge_window, lesion_view, write_preview
from softmask_builder.reports.report import N_REVIEW, write_report
from tests.softmask_builder.dataset.test_build import fake_labeller, fake_loader, make_refs, recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "toy"
    refs = make_refs(30, per_patient=2, fail_every=9)
    run_build(make_plan(recipe(), refs), out, loader=fake_loader, labeller=fake_labeller)
    return out, refs


def oracle(refs):
    """Per built sample: (unknown px, |edge offset|, lesion px), from the fake
    loader and labeller directly (no shard read)."""
    out = {}
    for ref in refs:
        if ref.payload["fail"]:
            continue
        labels = fake_labeller(fake_loader(ref), None)
        out[ref.sample_id] = (int((labels.trimap == 128).sum()), abs(_brute_edge_offset(labels.trimap, labels.soft_mask)),
                              int(labels.binary_mask.sum()))
    return out


def _brute_edge_offset(trimap, alpha):
    """edge_offset by brute force: every unknown pixel's distance to every sure pixel (no
    distance transform)."""
    rr, cc = np.indices(trimap.shape)
    pts = np.stack([rr.ravel(), cc.ravel()], 1).astype(float)
    flat = trimap.ravel()
    sure, bg, unk = pts[flat == 255], pts[flat == 0], pts[flat == 128]
    if not len(unk) or not len(sure) or not len(bg):
        return 0.0
    d_sure = np.sqrt(((unk[:, None] - sure[None]) ** 2).sum(-1)).min(1)
    d_bg = np.sqrt(((unk[:, None] - bg[None]) ** 2).sum(-1)).min(1)
    inner = int((d_sure / (d_sure + d_bg) < 0.5).sum())
    moved = int((alpha >= 0.5).sum()) - (len(sure) + inner)
    room = inner if moved < 0 else len(unk) - inner
    return min(1.0, max(-1.0, moved / room)) if room else 0.0


def top(values, key, reverse):
    sign = -1 if reverse else 1
    return [sid for sid, _ in sorted(values.items(), key=lambda kv: (sign * key(kv[1]), kv[0]))[:N_REVIEW]]


def test_review_picks_match_an_independent_recomputation(built, tmp_path):
    out, refs = built
    truth = oracle(refs)
    summary = write_report(out, tmp_path / "r.html")
    review = summary["review"]
    assert summary["n_samples"] == len(truth)
    assert review["largest unknown band"] == top(truth, lambda v: v[0], True)
    assert review["largest sure-lesion vs Soft Mask disagreement"] == top(truth, lambda v: v[1], True)
    assert review["smallest lesions"] == top(truth, lambda v: v[2], False)


def test_page_is_self_contained_with_counts_and_rejects(built, tmp_path):
    out, refs = built
    html = (tmp_path / "r.html")
    write_report(out, html)
    text = html.read_text(encoding="utf-8")
    assert not re.findall(r'(?:src|href)\s*=\s*"(?!data:)', text), "external reference in the page"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 1 + 3  # histogram + one overlay figure per review criterion
    for payload in images:
        assert cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR) is not None
    rejected = [r.sample_id for r in refs if r.payload["fail"]]
    with open(out / "rejects.csv", newline="") as fh:
        assert sorted(r["sample_id"] for r in csv.DictReader(fh)) == rejected
    for sid in rejected:
        assert f"<td>{sid}</td>" in text
    manifest = json.loads((out / "manifest.json").read_text())
    for split, c in manifest["splits"].items():
        assert f"<td>{split}</td><td>{c['n_samples']}</td>" in text
    assert str(tmp_path) not in text and str(out.parent) not in text  # no absolute path


def test_report_is_byte_reproducible_and_needs_a_finished_build(built, tmp_path):
    out, _ = built
    write_report(out, tmp_path / "a.html")
    write_report(out, tmp_path / "b.html")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="manifest.json"):
        write_report(tmp_path / "empty", tmp_path / "c.html")


def test_edge_window_centres_the_band_pixel_nearest_half():
    alpha = np.zeros((20, 20), np.float32)
    trimap = np.zeros((20, 20), np.uint8)
    trimap[5:9, 5:15] = 128
    alpha[5:9, 5:15] = 0.2
    alpha[7, 11] = 0.45           # nearest 0.5 inside the band
    alpha[0, 0] = 0.5             # exactly 0.5 but outside the band: ignored
    assert edge_window(alpha, trimap, size_px=6) == (4, 10, 8, 14)
    assert edge_window(alpha, np.zeros_like(trimap)) is None
    assert edge_window(alpha, trimap, size_px=40) == (0, 20, 0, 20)  # clipped to the crop


def test_lesion_view_is_a_square_around_the_trimap():
    trimap = np.zeros((64, 64), np.uint8)
    trimap[30:34, 40:44] = 128
    r0, r1, c0, c1 = lesion_view(trimap, min_px=28)
    assert r1 - r0 == c1 - c0 == 28 and r0 <= 30 and r1 >= 34 and c0 <= 40 and c1 >= 44
    trimap[:, :] = 128
    assert lesion_view(trimap) == (0, 64, 0, 64)
    assert lesion_view(np.zeros((64, 64), np.uint8)) is None


def test_preview_draws_the_contour_and_is_reproducible(built, tmp_path):
    out, _ = built
    a, b = write_preview(out, tmp_path / "a.png", n=3), write_preview(out, tmp_path / "b.png", n=3)
    assert a.read_bytes() == b.read_bytes()
    bgr = cv2.imread(str(a), cv2.IMREAD_COLOR).astype(int)
    red = (np.abs(bgr[..., 2] - 255) < 40) & (bgr[..., 1] < 90) & (np.abs(bgr[..., 0] - 85) < 50)
    assert red.sum() > 50, "no Soft Mask 0.5 contour (red) drawn"


def test_edge_offset_ends_and_middle():
    """A disk core, a ring band, background: alpha = 1 on the core only gives -1, on core + band
    +1, and on the disk up to the band's mid-line about 0; no band or no core gives 0."""
    from softmask_builder.reports.report import edge_offset

    rr, cc = np.indices((41, 41))
    r = np.hypot(rr - 20, cc - 20)
    trimap = np.where(r <= 6, 255, np.where(r <= 12, 128, 0)).astype(np.uint8)
    assert edge_offset(trimap, (r <= 6).astype(np.float32)) == pytest.approx(-1.0)
    assert edge_offset(trimap, (r <= 12).astype(np.float32)) == pytest.approx(1.0)
    assert abs(edge_offset(trimap, (r <= 9).astype(np.float32))) < 0.1  # the mid-line radius
    assert edge_offset(trimap, (r <= 8).astype(np.float32)) < edge_offset(trimap, (r <= 10).astype(np.float32))
    assert edge_offset(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.float32)) == 0.0
    assert edge_offset(np.where(r <= 12, 128, 0).astype(np.uint8), (r <= 9).astype(np.float32)) == 0.0


def test_page_shows_left_out_rows_by_their_filter_and_the_warnings(tmp_path):
    """Rows a selection filter left out are counted by that filter (not "the split targets or
    --limit"), listed, and the build's warnings (an empty val split) are on the page (issue 24).
    The expected counts are those of unselected.csv, read independently."""
    from collections import Counter

    from softmask_builder.sources.base import unselected_row

    refs = make_refs(8, per_patient=2)
    left = [unselected_row(f"u{i:03d}", "min_readers" if i < 3 else "long_axis_mm", f"why {i}") for i in range(5)]
    rec = recipe(split={"method": "patient", "seed": 3, "counts": {"train": 8, "val": 0, "test": 0}})
    out = tmp_path / "toy"
    run_build(make_plan(rec, refs, unselected=left), out, loader=fake_loader, labeller=fake_labeller)
    with open(out / "unselected.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = Counter(r["filter"] for r in rows)
    assert counts == {"min_readers": 3, "long_axis_mm": 2}
    page = (tmp_path / "r.html")
    write_report(out, page)
    text = page.read_text()
    assert "split targets or --limit" not in text
    assert "5 left out by the recipe's selection (long_axis_mm 2, min_readers 3)" in text
    for r in rows:
        assert f"<td>{r['sample_id']}</td><td>{r['filter']}</td><td>{r['detail']}</td>" in text
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert warnings and all(w.replace("'", "&#x27;") in text for w in warnings)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_figure_text_stays_inside_the_figure(built, n):
    """Titles, legend and colour-bar label lie inside the canvas for narrow and wide sheets (a
    one-sample preview used to cut its title and legend; issue 24). Checked on the drawn artists'
    pixel extents against the figure's."""
    from matplotlib.text import Text

    from softmask_builder.reports.figures import SampleRef, read_samples, samples_figure
    from softmask_builder.formats.release_folder import read_manifest

    out, _ = built
    entry = read_manifest(out)["shards"][0]
    refs = [SampleRef(out / entry["file"], i % entry["n_samples"]) for i in range(n)]
    fig = samples_figure(read_samples(refs), level_hu=-600, width_hu=1500,
                         title="lnsm_sample: 1 of 60 samples (a long title as the preview writes it)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 5
    for t in texts:
        ext = t.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, \
            (t.get_text(), ext, box)
