"""The shared exit-code table (softmask_builder.exitcodes) and I/O faults: a full disk is a
one-line error naming the path with exit 5, leaves nothing under a final name, and a rerun
finishes the build."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

from softmask_builder import exitcodes
from softmask_builder.formats import shards
from softmask_builder.dataset.release import verify
from tests.adversarial.kit import assert_one_line_error, final_files, invoke

REPO = Path(__file__).resolve().parents[2]


def test_exit_code_table_is_the_documented_one():
    # The values are an interface (scripts test them): compare with the table in README.md.
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Exit codes, one table"):].split("\n\n")[1]  # the table after that line
    table = {int(line.split("|")[1]): line.split("|")[2].strip() for line in section.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    names = {v: k for k, v in vars(exitcodes).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert sorted(table) == sorted(names) == list(range(7))
    assert names == {0: "EXIT_OK", 1: "EXIT_INTERNAL", 2: "EXIT_INPUT", 3: "EXIT_VERIFY", 4: "EXIT_EMPTY",
                     5: "EXIT_IO", 6: "EXIT_LOCKED"}
    assert "disk full" in table[5] and "locked" in table[6] and "nothing built" in table[4]


@pytest.mark.parametrize("exc, expect", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/a.h5"), "disk full (no space left) while writing /x/a.h5"),
    (OSError(errno.EFBIG, "File too large"), "disk full (no space left) while writing /out"),
    (OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')"),
     "disk full (no space left) while writing /out"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/b"), "I/O error on /x/b: Permission denied"),
])
def test_io_error_message_names_the_path(exc, expect):
    assert exitcodes.io_error_message(exc, "/out") == expect


def test_enospc_in_a_shard_write_is_exit_5_and_a_rerun_recovers(phantom3, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_file = h5py.File

    def full_disk(name, mode="r", *a, **kw):
        if mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_file(name, mode, *a, **kw)

    monkeypatch.setattr(shards.h5py, "File", full_disk)
    result = invoke("build", "slices", phantom3, "--recipe", _slices_yaml(tmp_path), "--out", out)
    assert_one_line_error(result, exitcodes.EXIT_IO, "disk full", str(out))
    assert not [n for n in final_files(out) if n.endswith(".h5")]  # nothing under a final name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(shards.h5py, "File", real_file)
    result = invoke("build", "slices", phantom3, "--recipe", _slices_yaml(tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    assert verify(out).ok


def _slices_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "slices.yaml"
    path.write_text("dataset: advs\nsource: deeplesion_slices\nsamples_per_shard: 4\n"
                    "split: {method: patient, seed: 0, fractions: {train: 1.0}}\n")
    return path


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="RLIMIT_FSIZE test needs Linux")
def test_file_size_limit_in_a_real_process_is_exit_5(phantom3, tmp_path):
    """A real full disk, simulated with RLIMIT_FSIZE in a subprocess (writes past the limit fail
    with EFBIG once SIGXFSZ is ignored)."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))
        from softmask_builder.cli import main
        sys.argv = ["softmask", "build", "slices", {str(phantom3)!r}, "--recipe", {str(_slices_yaml(tmp_path))!r},
                    "--out", {str(out)!r}, "--no-progress"]
        main()
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == exitcodes.EXIT_IO, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "disk full" in lines[0] and str(out) in lines[0], proc.stderr
    assert not [n for n in final_files(out) if n.endswith(".h5")]
