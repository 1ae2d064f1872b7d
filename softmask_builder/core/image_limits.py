"""Limits checked on an image file's header *before* it is decoded.

A PNG declares its size in its first 24 bytes; a 226 KB file can claim 60000 x 60000 pixels
(a 7 GB 16-bit raster), which OpenCV refuses with a multi-line ``cv2.error`` or tries to
allocate. :func:`check_png_size` reads the IHDR chunk and refuses such a file with a one-line
error before any decoder runs. Used by every PNG reader of the builder's sources
(``sources.deeplesion``, ``sources.masks``, zip members included) and by ``dsnet predict``.

The cap, :data:`MAX_IMAGE_PIXELS` = 8192 x 8192 (67 Mpx: 128 MiB as 16-bit), is far above any
CT slice (DeepLesion and LIDC are 512 x 512) and any crop; :data:`MAX_IMAGE_SIDE` = 16384 bounds
one side. Bytes that are not a PNG are left to the decoder (which then reports them).
"""

from __future__ import annotations

import struct

from softmask_builder.errors import InputError

MAX_IMAGE_PIXELS = 8192 * 8192
MAX_IMAGE_SIDE = 16384
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data) -> tuple[int, int] | None:
    """``(rows, cols)`` declared by a PNG's IHDR chunk, or None if ``data`` (bytes or a uint8
    array) does not start like a PNG with an IHDR chunk."""
    head = bytes(memoryview(data)[:24])
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    cols, rows = struct.unpack(">II", head[16:24])
    return rows, cols


def check_png_size(data, *, name: str, sample_id: str | None = None, stage: str | None = None) -> None:
    """Raise :class:`InputError` (one line naming ``name``) if the PNG in ``data`` declares more
    than :data:`MAX_IMAGE_PIXELS` pixels, a side above :data:`MAX_IMAGE_SIDE`, or a zero side.
    Non-PNG bytes pass (the decoder judges them)."""
    size = png_size(data)
    if size is None:
        return
    rows, cols = size
    if rows == 0 or cols == 0 or rows > MAX_IMAGE_SIDE or cols > MAX_IMAGE_SIDE or rows * cols > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: PNG header declares {rows} x {cols} pixels, over the decode cap "
                         f"({MAX_IMAGE_PIXELS} pixels, {MAX_IMAGE_SIDE} per side) or empty; not decoded",
                         sample_id=sample_id, stage=stage)
