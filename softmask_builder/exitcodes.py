"""The one exit-code table of both command lines, ``softmask`` and ``dsnet``.

====  ===============  =====================================================================
code  name             meaning
====  ===============  =====================================================================
0     EXIT_OK          success (a build may still have rejected samples: ``rejects.csv``)
1     EXIT_INTERNAL    unexpected internal error (a bug: the traceback is printed)
2     EXIT_INPUT       usage or bad input (option, recipe, source folder, checkpoint, an
                       output folder holding a different build)
3     EXIT_VERIFY      ``verify`` found a mismatch (hash, schema or counts)
4     EXIT_EMPTY       nothing built (every planned sample rejected, or none planned)
5     EXIT_IO          I/O error while reading or writing (disk full, permission denied);
                       the one-line message names the path
6     EXIT_LOCKED      the ``--out`` folder is locked by another running build
====  ===============  =====================================================================

This module imports nothing, so any entry point can use it without loading the package's heavy
dependencies.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_VERIFY = 3
EXIT_EMPTY = 4
EXIT_IO = 5
EXIT_LOCKED = 6

#: code -> one-line meaning (what ``--help`` texts and docs print).
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_INTERNAL: "internal error",
    EXIT_INPUT: "usage or bad input",
    EXIT_VERIFY: "verify mismatch",
    EXIT_EMPTY: "nothing built",
    EXIT_IO: "I/O error (disk full: the message names the path)",
    EXIT_LOCKED: "--out locked by another build",
}


def io_error_message(exc: OSError, fallback_path=None) -> str:
    """A one-line message for an ``OSError`` that names the path (``exc.filename``, else
    ``fallback_path``, e.g. the output folder being written) and says "disk full" for ENOSPC
    (HDF5 reports a full disk as an OSError whose text holds "errno = 28" and no file name)."""
    import errno

    path = exc.filename if exc.filename is not None else fallback_path
    text = str(exc)
    full = exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "errno = 28" in text \
        or "No space left" in text or "File too large" in text
    where = f" {path}" if path is not None else ""
    if full:
        return f"disk full (no space left) while writing{where}"
    cause = " ".join(str(exc.strerror or text).split())
    return f"I/O error on {path}: {cause}" if path is not None else f"I/O error: {cause}"
