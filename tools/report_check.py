"""Render a QC report (``softmask report``) in headless Chromium and check what it shows.

    python tools/report_check.py REPORT.html --screenshot docs/img/report.png [--chromium PATH]

Checks: every <img> in the page is an embedded PNG that decodes (no external reference of any
kind: src/href to http(s) or files), Chromium renders the page (exit 0, a PNG of the window size),
and the screenshot is not blank (at least 5 % of its pixels differ from the white background).
Exit 0 with "skipped: ..." on stderr when no Chromium is found (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np


def check_html(text: str) -> int:
    """Number of embedded images; raises ValueError on an external reference or a bad image."""
    external = re.findall(r'(?:src|href)\s*=\s*"(?!data:)([^"]*)"', text)
    if external:
        raise ValueError(f"the report references external resources: {external[:3]}")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    for i, payload in enumerate(images):
        arr = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
        if arr is None or min(arr.shape[:2]) < 50:
            raise ValueError(f"embedded image {i} does not decode to a PNG of at least 50x50 px")
    return len(images)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--screenshot", type=Path, required=True)
    ap.add_argument("--chromium", default=None, help="Chromium binary (default: chromium or chromium-browser on PATH)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2600)
    args = ap.parse_args(argv)
    n_images = check_html(args.report.read_text(encoding="utf-8"))
    exe = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("report-check: skipped: no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={tmp}/profile", f"--window-size={args.width},{args.height}",
                               f"--screenshot={shot}", args.report.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
        if proc.returncode != 0 or not shot.is_file():
            print(f"report-check: chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
        if image is None or image.shape[:2] != (args.height, args.width):
            print(f"report-check: screenshot has shape {None if image is None else image.shape}", file=sys.stderr)
            return 1
        inked = float(np.mean(np.any(image < 235, axis=2)))
        if inked < 0.05:
            print(f"report-check: the rendered page is blank ({inked:.1%} non-white pixels)", file=sys.stderr)
            return 1
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.screenshot)
    print(f"report-check: {args.report} renders in Chromium ({n_images} embedded images, {inked:.0%} of the "
          f"{args.width}x{args.height} screenshot inked) -> {args.screenshot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
