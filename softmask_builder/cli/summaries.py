"""One human line per long ``softmask`` command, printed on stderr after the JSON summary on stdout:
what was built, where, and what to run next. Pure functions of the JSON summaries (no I/O), so
the line always agrees with the JSON.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping


def _q(path: Any) -> str:
    return shlex.quote(str(path))


def _secs(seconds: float | None) -> str:
    return "" if seconds is None else f" in {seconds:.1f} s"


def _rejects(summary: Mapping[str, Any], out: Any) -> str:
    n = int(summary.get("n_rejects", 0))
    if not n:
        return "0 rejected"
    stages = ", ".join(f"{k} {v}" for k, v in summary.get("rejects_by_stage", {}).items())
    return f"{n} rejected ({stages}; see {out}/rejects.csv)"


def build_line(summary: Mapping[str, Any], *, kind: str = "samples", seconds: float | None = None) -> str:
    """After ``softmask build``: samples, rejects, shards, folder; next: verify, report or pretrain-sr."""
    out = summary["out"]
    if summary.get("dry_run"):
        return (f"planned {summary.get('n_planned', 0)} samples of {summary.get('dataset', '?')} in "
                f"{summary.get('n_shards', 0)} shards for {out}; nothing written. Next: the same command "
                "without --dry-run.")
    if not summary.get("n_samples"):
        return f"built nothing into {out}: {_rejects(summary, out)}. Next: read {out}/rejects.csv."
    skipped = summary.get("n_shards_skipped", 0)
    reuse = f", {skipped} reused" if skipped else ""
    nxt = (f"dsnet pretrain-sr --data {_q(out)} --out runs/sr" if kind == "slices"
           else f"softmask report {_q(out)} (QC page), dsnet train --data {_q(out)}")
    return (f"built {summary['n_samples']} {'slices' if kind == 'slices' else 'samples'} of {summary['dataset']} "
            f"into {out} ({summary.get('n_shards', 0)} shards{reuse}; {_rejects(summary, out)}){_secs(seconds)}. "
            f"Next: softmask verify {_q(out)}; {nxt}.")


def make_lnsm_line(summary: Mapping[str, Any], *, seconds: float | None = None) -> str:
    """After ``softmask make-lnsm``: the build line's facts, the verify verdict, preview, next steps."""
    b, v = summary["build"], summary["verify"]
    out = b["out"]
    verdict = "verified OK" if v.get("ok") else f"verify FAILED ({len(v.get('problems', []))} problems)"
    if not b.get("n_samples"):
        return f"built nothing into {out}: {_rejects(b, out)}; {verdict}. Next: read {out}/rejects.csv."
    preview = f", preview {summary['preview']}" if summary.get("preview") else ""
    return (f"built {b['n_samples']} samples of {b['dataset']} into {out} ({_rejects(b, out)}), {verdict}{preview}"
            f"{_secs(seconds)}. Next: softmask report {_q(out)} (QC page), then make pretrain-sr and make train "
            f"(dsnet train --data {_q(out)}).")


def phantom_line(summary: Mapping[str, Any]) -> str:
    how = "reused" if summary.get("reused") else "wrote"
    return (f"{how} the phantom sample ({summary['n']} cases, seed {summary['seed']}) in {summary['out']}. "
            f"Next: softmask build deeplesion {_q(summary['out'])} --recipe sample --out build/lnsm.")


def preview_line(summary: Mapping[str, Any]) -> str:
    return f"wrote the preview of {summary['n']} samples to {summary['preview']}; open it in an image viewer."


def report_line(summary: Mapping[str, Any]) -> str:
    return (f"wrote the QC report ({summary['n_samples']} samples, {summary['n_rejects']} rejects) to "
            f"{summary['report']}; open it in a browser (one self-contained file).")


def verify_line(summary: Mapping[str, Any]) -> str:
    if summary.get("ok"):
        return (f"verify: {summary['out']} OK ({summary.get('n_shards', 0)} shards, "
                f"{summary.get('n_samples', 0)} samples; sha256, schema and counts match).")
    return f"verify: {summary['out']} FAILED: {len(summary.get('problems', []))} problems (listed above)."


__all__ = ["build_line", "make_lnsm_line", "phantom_line", "preview_line", "report_line", "verify_line"]
