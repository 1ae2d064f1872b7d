"""One human line per long ``softmask`` command, printed on stderr after the JSON summary on stdout:
what was built, where, and what to run next. Functions of the JSON summaries, so the line always
agrees with the JSON.

Every command a line suggests can be pasted into a shell as printed: :func:`tool` writes
``.venv/bin/softmask`` (the path of the running command) unless that command is on ``PATH``. A
"Next:" step is suggested only when it can work on what was just built (``dsnet train`` needs
train and val samples), and only by the command the user typed: a Makefile step run inside
another (``make pretrain-sr`` runs ``softmask phantom`` and ``softmask build``) sets
``SOFTMASK_NO_HINTS=1`` and its line keeps the facts without a "Next:".
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

#: Set to 1 by a caller (the Makefile) that runs a command as one step of a longer target.
NO_HINTS_ENV = "SOFTMASK_NO_HINTS"


def _q(path: Any) -> str:
    return shlex.quote(str(path))


def tool(name: str) -> str:
    """``name`` ("softmask", "dsnet") as the user can type it: the bare name when ``PATH`` finds
    this installation's script, else its path beside the running Python (relative to the current
    folder when inside it: ``.venv/bin/softmask``)."""
    bindir = Path(sys.executable).parent
    found = shutil.which(name)
    if found and Path(found).parent.absolute() == bindir.absolute():
        return name
    script = bindir / name
    try:
        return shlex.quote(str(script.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script.absolute()))


def hints_on() -> bool:
    return os.environ.get(NO_HINTS_ENV, "") in ("", "0")


def _next(text: str) -> str:
    return f" Next: {text}" if hints_on() and text else ""


def _secs(seconds: float | None) -> str:
    return "" if seconds is None else f" in {seconds:.1f} s"


def _split_n(summary: Mapping[str, Any], split: str) -> int:
    c = (summary.get("splits") or {}).get(split, 0)
    return int(c.get("n_samples", 0) if isinstance(c, Mapping) else c)


def _rejects(summary: Mapping[str, Any], out: Any) -> str:
    n = int(summary.get("n_rejects", 0))
    if not n:
        return "0 rejected"
    stages = ", ".join(f"{k} {v}" for k, v in summary.get("rejects_by_stage", {}).items())
    return f"{n} rejected ({stages}; see {out}/rejects.csv)"


def _unselected(summary: Mapping[str, Any], out: Any) -> str:
    """"; N left out by selection filters (filter n, ...; see OUT/unselected.csv)", or "" when none."""
    n = int(summary.get("n_unselected", 0))
    if not n:
        return ""
    filters = ", ".join(f"{k} {v}" for k, v in (summary.get("unselected_by_filter") or {}).items())
    return f"; {n} left out by the recipe's selection ({filters or 'split targets or --limit'}; see {out}/unselected.csv)"


def nothing_built_error(summary: Mapping[str, Any]) -> str:
    """The error of a build that made no sample: both files, with their counts per stage/filter."""
    out = Path(summary["out"])
    n_rej, n_uns = int(summary.get("n_rejects", 0)), int(summary.get("n_unselected", 0))
    rej = ", ".join(f"{k} {v}" for k, v in summary.get("rejects_by_stage", {}).items())
    uns = ", ".join(f"{k} {v}" for k, v in (summary.get("unselected_by_filter") or {}).items())
    return (f"no sample was built: {n_rej} rejected{f' ({rej})' if rej else ''}, listed in {out / 'rejects.csv'}; "
            f"{n_uns} left out by the recipe's selection{f' ({uns})' if uns else ''}, listed in "
            f"{out / 'unselected.csv'}")


def _cant_train(summary: Mapping[str, Any]) -> str:
    """Why `dsnet train` would not work on the build (its train or val split is empty), or ""."""
    empty = [s for s in ("train", "val") if _split_n(summary, s) == 0]
    if not empty:
        return ""
    return (f"(not dsnet train: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty; "
            "it needs a larger source or other split targets)")


def _train_next(summary: Mapping[str, Any], out: Any) -> str:
    """`dsnet train` when the build has train and val samples, else why it would not work."""
    return _cant_train(summary) or f"{tool('dsnet')} train --data {_q(out)} --variant unet (no SR teacher needed)"


def build_line(summary: Mapping[str, Any], *, kind: str = "samples", seconds: float | None = None) -> str:
    """After ``softmask build``: samples, rejects, left-out rows, shards, folder; next: verify,
    report, and training when it can work."""
    out = summary["out"]
    sm = tool("softmask")
    if summary.get("dry_run"):
        return (f"planned {summary.get('n_planned', 0)} samples of {summary.get('dataset', '?')} in "
                f"{summary.get('n_shards', 0)} shards for {out}; nothing written{_unselected(summary, out)}."
                + _next("the same command without --dry-run."))
    if not summary.get("n_samples"):
        return (f"built nothing into {out}: {_rejects(summary, out)}{_unselected(summary, out)}."
                + _next(f"read {out}/rejects.csv and {out}/unselected.csv."))
    skipped = summary.get("n_shards_skipped", 0)
    reuse = f", {skipped} reused" if skipped else ""
    if kind == "slices":
        nxt = (f"{tool('dsnet')} pretrain-sr --data {_q(out)} --out runs/sr" if _split_n(summary, "train")
               else "(not dsnet pretrain-sr: the train split is empty)")
    elif kind == "volumes":  # dsnet trains on 2-D crops: a volume build goes to nnU-Net / MONAI
        nxt = f"{sm} inspect {_q(out)} (dsnet train is 2-D; volume builds are for 3-D trainers)"
    else:
        nxt = f"{sm} report {_q(out)} (QC page); {_train_next(summary, out)}"
    noun = {"slices": "slices", "volumes": "volumes"}.get(kind, "samples")
    return (f"built {summary['n_samples']} {noun} of {summary['dataset']} "
            f"into {out} ({summary.get('n_shards', 0)} shards{reuse}; {_rejects(summary, out)}"
            f"{_unselected(summary, out)}){_secs(seconds)}." + _next(f"{sm} verify {_q(out)}; {nxt}."))


def make_lnsm_line(summary: Mapping[str, Any], *, seconds: float | None = None) -> str:
    """After ``softmask make-lnsm``: the build line's facts, the verify verdict, preview, next steps."""
    b, v = summary["build"], summary["verify"]
    out = b["out"]
    verdict = "verified OK" if v.get("ok") else f"verify FAILED ({len(v.get('problems', []))} problems)"
    if not b.get("n_samples"):
        return (f"built nothing into {out}: {_rejects(b, out)}{_unselected(b, out)}."
                + _next(f"read {out}/rejects.csv and {out}/unselected.csv."))
    preview = f", preview {summary['preview']}" if summary.get("preview") else ""
    # A real build's teacher is trained on the same source's slices (DEEPLESION=), never on the phantom's.
    real = f" DEEPLESION={_q(summary['deeplesion'])}" if summary.get("deeplesion") else ""
    train = _cant_train(b) or f", then make train{real} LNSM_DIR={_q(out)} (SR teacher first, then DSNet)"
    return (f"built {b['n_samples']} samples of {b['dataset']} into {out} ({_rejects(b, out)}{_unselected(b, out)}), "
            f"{verdict}{preview}{_secs(seconds)}."
            + _next(f"make report OUT={_q(out)} (QC page {out}-report.html){'' if train.startswith(',') else ' '}{train}."))


def phantom_line(summary: Mapping[str, Any]) -> str:
    how = "reused" if summary.get("reused") else "wrote"
    return (f"{how} the phantom sample ({summary['n']} cases, seed {summary['seed']}) in {summary['out']}."
            + _next(f"{tool('softmask')} build deeplesion {_q(summary['out'])} --recipe sample --out build/lnsm."))


def preview_line(summary: Mapping[str, Any]) -> str:
    return f"wrote the preview of {summary['n']} samples to {summary['preview']}; open it in an image viewer."


def report_line(summary: Mapping[str, Any]) -> str:
    return (f"wrote the QC report ({summary['n_samples']} samples, {summary['n_rejects']} rejects) to "
            f"{summary['report']}; open it in a browser (one self-contained file).")


def export_nnunet_line(summary: Mapping[str, Any]) -> str:
    """After ``softmask export nnunet``: what was written, where, and nnU-Net's next step."""
    splits = f"; splits_final.json in {summary['splits_final']}" if summary.get("splits_final") else ""
    return (f"exported {summary['numTraining']} training and {summary['n_test']} test cases for nnU-Net v2 to "
            f"{summary['folder']} (binary labels; licence and citations in dataset.json){splits}.")


def export_monai_line(summary: Mapping[str, Any]) -> str:
    """After ``softmask export monai``: the counts per split and the datalist's path."""
    counts = ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("folder", "datalist"))
    return (f"exported {counts} samples as NIfTI (image, label, soft_label) to {summary['folder']}; MONAI datalist "
            f"{summary['datalist']} (load_decathlon_datalist; docs/MONAI.md).")


def verify_line(summary: Mapping[str, Any], *, manifest: Mapping[str, Any] | None = None) -> str:
    """After ``softmask verify``; with the verified build's ``manifest``, the next step that can
    work on it (the QC report and training for sample builds, the SR teacher for slice builds)."""
    if summary.get("ok"):
        out = summary["out"]
        nxt = ""
        if manifest and manifest.get("n_samples"):
            if manifest.get("kind") == "slices":
                nxt = (f"{tool('dsnet')} pretrain-sr --data {_q(out)} --out runs/sr" if _split_n(manifest, "train")
                       else "")
            else:
                nxt = f"{tool('softmask')} report {_q(out)} (QC page); {_train_next(manifest, out)}"
        return (f"verify: {out} OK ({summary.get('n_shards', 0)} shards, "
                f"{summary.get('n_samples', 0)} samples; sha256, schema and counts match)."
                + _next(f"{nxt}." if nxt else ""))
    return f"verify: {summary['out']} FAILED: {len(summary.get('problems', []))} problems (listed above)."


__all__ = ["export_nnunet_line", "export_monai_line", "build_line", "make_lnsm_line", "phantom_line", "preview_line", "report_line", "verify_line", "tool",
           "nothing_built_error", "hints_on", "NO_HINTS_ENV"]
