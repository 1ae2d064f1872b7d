"""Every shell command quoted in README.md and docs/*.md matches the real CLIs and Makefile (an
unknown flag, subcommand, choice, make target or make variable fails here), and those that can
run on the phantom sample are run (tiny N). See ``doc_commands.py`` for what is parsed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsnet_trainer.cli import main as dsnet_main
from softmask_builder.cli import main as softmask_main
from tests.docs.doc_commands import (PLACEHOLDER, ROOT, DocCommand, _tokens, all_commands, check_click, check_make,
                                     check_pytest, find_commands)

COMMANDS = all_commands()
MAKEFILE = (ROOT / "Makefile").read_text()


def problems_of(cmd: DocCommand) -> list[str]:
    if cmd.program == "make":
        if shutil.which("make") is None:
            pytest.skip("make is not installed")
        return check_make(cmd, MAKEFILE)
    if cmd.program == "softmask":
        return check_click(cmd, softmask_main)
    if cmd.program == "dsnet":
        return check_click(cmd, dsnet_main)
    return check_pytest(cmd)


def test_the_docs_quote_commands_of_every_kind():
    kinds = {c.program for c in COMMANDS}
    assert kinds >= {"make", "softmask", "dsnet", "pytest"}, kinds
    assert len(COMMANDS) > 50


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.where} {c.text[:50]}" for c in COMMANDS])
def test_documented_command_matches_the_cli(cmd):
    assert problems_of(cmd) == []


@pytest.mark.parametrize("text, expected", [
    ("dsnet predict --checkpoint … --data build/lnsm --out preds/", "has no option --data"),
    ("softmask build deeplesion|lidcx SOURCE", "`softmask build lidcx` is not a command"),
    ("softmask lidc-agreement --cohort eq5", "does not accept ['eq5']"),
    ("softmask make-lnsm --out DIR --jobz 2", "has no option --jobz"),
    ("make lnsm NN=400", "no variable NN"),
    ("make no-such-target", "fails"),
    ("python -m pytest -q tests/no_such_test.py", "does not exist"),
])
def test_the_checker_catches_drift(tmp_path, text, expected, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text(f"Intro.\n\n```\n{text}   # a comment\n```\n")
    monkeypatch.setattr("tests.docs.doc_commands.ROOT", tmp_path)
    found = find_commands(doc)
    assert [c.text for c in found] == [text]
    monkeypatch.setattr("tests.docs.doc_commands.ROOT", ROOT)
    problems = problems_of(found[0])
    assert problems and expected in problems[0] and "doc.md:4" in problems[0]


def test_parser_splits_joins_and_skips_non_shell_fences(tmp_path, monkeypatch):
    doc = tmp_path / "d.md"
    doc.write_text("```yaml\nmake: no\n```\n```bash\nsoftmask verify A ; softmask inspect B && make \\\n  lnsm N=4\n"
                   "for v in a b; do\n  dsnet train --variant $v\ndone\n```\nInline `softmask report DIR` here.\n")
    monkeypatch.setattr("tests.docs.doc_commands.ROOT", tmp_path)
    assert [(c.line, c.text, c.fenced) for c in find_commands(doc)] == [
        (5, "softmask verify A", True), (5, "softmask inspect B", True), (5, "make    lnsm N=4", True),
        (8, "dsnet train --variant $v", True), (11, "softmask report DIR", False)]


# --- the ones that run on the phantom sample --------------------------------------------------

# Placeholders the docs use for "your dataset folder", "one shard", output files.
RUNNABLE = ("verify", "inspect", "preview", "report", "phantom", "make-lnsm")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("docsample")
    out = root / "lnsm"
    result = CliRunner().invoke(softmask_main, ["make-lnsm", "--out", str(out), "--n", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def runnable_invocations(cmd: DocCommand, dataset: Path, scratch: Path) -> list[list[str]]:
    """The argument lists to run for a documented softmask command, [] when it cannot run on the sample."""
    # An optional part the sample cannot fill (`[--deeplesion PATH]`) is left out.
    words = _tokens(re.sub(r"\[[^\]]*\b(?:PATH|SOURCE|NAME)\b[^\]]*\]", " ", cmd.text))
    if cmd.program != "softmask" or len(words) < 2 or words[1] not in RUNNABLE:
        return []
    if len(words) == 2 and not cmd.fenced:
        return []  # a command named in prose (`softmask verify`), not an invocation
    if words[1] in ("phantom", "make-lnsm") and "--out" not in words:
        return []  # would write to the default folder of the working tree
    shard = sorted(dataset.glob("*.h5"))[0]
    fresh = words[1] in ("phantom", "make-lnsm")
    subs = {"DIR": scratch / "new" if fresh else dataset, "OUT": dataset, "SHARD": shard, "N": "1",
            "p.png": scratch / "p.png", "preview.png": scratch / "preview.png", "report.html": scratch / "r.html",
            "DIR-report.html": scratch / "dir-report.html", "I": "0",
            "build/lnsm": scratch / "new" if fresh else dataset}  # `make lnsm`'s folder: the sample
    variants: list[list[str]] = [[]]
    for i, word in enumerate(words[1:], 1):
        alts = word.split("|")
        if words[i - 1] == "--n" and word.isdigit():
            alts = [str(min(int(word), 4))]  # tiny N
        if any(a not in subs and (PLACEHOLDER in a or re.fullmatch(r"[A-Z]+", a)) for a in alts):
            return []  # a placeholder we cannot fill (SOURCE, PATH, …)
        variants = [v + [str(subs.get(a, a))] for v in variants for a in alts]
    if fresh and "--n" not in words:
        variants = [v + ["--n", "4"] for v in variants]  # tiny N
    return variants


RUN = [c for c in COMMANDS if c.program == "softmask" and _tokens(c.text)[1:2] and _tokens(c.text)[1] in RUNNABLE]


@pytest.mark.parametrize("cmd", RUN, ids=[f"{c.where} {c.text[:50]}" for c in RUN])
def test_documented_command_runs_on_the_sample(cmd, sample, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs (e.g. build/lnsm60) must not land in the checkout
    runs = runnable_invocations(cmd, sample, tmp_path)
    if not runs:
        pytest.skip(f"{cmd.where}: needs data the sample does not have ({cmd.text!r}); options checked above")
    for args in runs:
        result = CliRunner().invoke(softmask_main, args)
        assert result.exit_code == 0, f"{cmd.where}: softmask {' '.join(args)}\n{result.output}"
        json.loads(result.stdout)


@pytest.mark.slow
def test_documented_lidc_agreement_runs():
    cmds = [c for c in COMMANDS if c.program == "softmask" and "lidc-agreement" in c.text and PLACEHOLDER not in c.text
            and "…" not in c.text]
    assert cmds
    for cmd in cmds:
        args = [w for w in _tokens(cmd.text)[1:]]
        result = CliRunner().invoke(softmask_main, args)
        assert result.exit_code == 0, f"{cmd.where}: {result.output}"


# --- dsnet commands on a tiny trained run (slow: trains one) ---------------------------------

DSNET_RUNNABLE = ("evaluate", "predict", "export", "compare", "teacher-info")


def dsnet_invocation(cmd: DocCommand, ckpt: Path, data: Path, teacher: Path, evals: list[Path],
                     scratch: Path) -> list[str] | None:
    """The documented dsnet command with its paths pointed at the tiny run; None when it cannot run."""
    words = _tokens(cmd.text)
    if words[0] != "dsnet" or len(words) < 3 or words[1] not in DSNET_RUNNABLE:
        return None
    args, i, n_eval = [words[1]], 2, 0
    while i < len(words):
        word = words[i]
        if word in ("--checkpoint", "--data", "--input", "--out") and i + 1 < len(words):
            value = {"--checkpoint": ckpt, "--data": data, "--input": data,
                     "--out": scratch / Path(words[i + 1]).name.replace(PLACEHOLDER, "x")}[word]
            args += [word, str(value)]
            i += 2
            continue
        if word.startswith("-"):
            args.append(word)
        elif re.fullmatch(r"[A-Z]+|\.\.\.|" + PLACEHOLDER, word):
            return None  # `dsnet compare A B ...`: a pattern, not an invocation
        elif words[1] == "teacher-info":
            args.append(str(teacher))
        elif words[1] == "compare" and "eval" in word:
            args.append(str(evals[n_eval % len(evals)]))
            n_eval += 1
        else:
            args.append(word)
        i += 1
    return args


DSNET_RUN = [c for c in COMMANDS if c.program == "dsnet" and c.text.split()[0] == "dsnet"
             and _tokens(c.text)[1:2] and _tokens(c.text)[1] in DSNET_RUNNABLE and len(c.text.split()) > 2]


@pytest.mark.slow
def test_documented_dsnet_commands_run_on_a_tiny_run(tmp_path):
    from tests.dsnet_trainer.seg_helpers import trained_run

    data, teacher, run = trained_run(tmp_path / "t", variant="unet", epochs=1)
    ckpt = Path(run) / "checkpoints" / "best.pt"
    evals = []
    for name in ("a", "b"):
        result = CliRunner().invoke(dsnet_main, ["evaluate", "--checkpoint", str(ckpt), "--data", str(data),
                                                 "--out", str(tmp_path / name / "eval-test")])
        assert result.exit_code == 0, result.output
        evals.append(tmp_path / name / "eval-test")
    assert DSNET_RUN
    ran = 0
    for cmd in DSNET_RUN:
        args = dsnet_invocation(cmd, ckpt, data, teacher, evals, tmp_path / f"o{ran}")
        if args is None or (args[0] == "teacher-info" and not teacher.is_file()):
            continue
        result = CliRunner().invoke(dsnet_main, args)
        assert result.exit_code == 0, f"{cmd.where}: dsnet {' '.join(args)}\n{result.output}"
        ran += 1
    assert ran >= 4


# --- the commands the CLIs print as "Next:" hints (issue 24) ----------------------------------

def hint_commands(line: str) -> list[str]:
    """The shell commands of a hint line's "Next: ..." part: split at ';' and ', then', the
    parenthesised notes dropped."""
    assert "Next: " in line, line
    text = re.sub(r"\([^)]*\)", " ", line.split("Next: ", 1)[1]).rstrip(". ")
    return [c.strip() for part in re.split(r";|\s*,\s+then\s+", text) for c in [part] if c.strip()]


def test_every_hint_is_a_command_that_pastes(sample, tmp_path, monkeypatch):
    """The hints of make-lnsm, build, verify and phantom name real subcommands, options and make
    targets/variables (the docs checker), and their `softmask`/`dsnet` is an executable that exists
    (a bare name only when PATH finds it): pasted after the set-up, none says `command not found`."""
    import os

    monkeypatch.chdir(tmp_path)
    runs = [["verify", str(sample)],
            ["phantom", "--out", str(tmp_path / "src"), "--n", "4", "--seed", "2"],
            ["build", "deeplesion", str(tmp_path / "src"), "--recipe", "sample", "--out", str(tmp_path / "b"),
             "--no-progress"],
            ["build", "deeplesion", str(tmp_path / "src"), "--recipe", str(tmp_path / "tv.yaml"), "--out",
             str(tmp_path / "tv"), "--no-progress"],
            ["make-lnsm", "--out", str(tmp_path / "m"), "--n", "4", "--no-progress"]]
    # A recipe whose build has train and val samples, so that `dsnet train` is suggested too.
    recipe = (ROOT / "manifests" / "sample.yaml").read_text()
    (tmp_path / "tv.yaml").write_text(recipe.replace("fractions: {train: 0.667, val: 0.067, test: 0.266}",
                                                     "fractions: {train: 0.5, val: 0.5}"))
    checked, seen = 0, []
    for args in runs:
        result = CliRunner().invoke(softmask_main, args)
        assert result.exit_code == 0, result.output
        for text in hint_commands(result.stderr.strip().splitlines()[-1]):
            words = text.split()
            if words[0] != "make":
                exe = shutil.which(words[0]) if "/" not in words[0] else words[0]
                assert exe and os.access(exe, os.X_OK), (args[0], text)
                text = " ".join([Path(words[0]).name] + words[1:])
            seen.append(text)
            cmd = DocCommand(f"hint of softmask {args[0]}", 1, text, True)
            assert cmd.program in ("softmask", "dsnet", "make"), text
            assert problems_of(cmd) == [], (args[0], text)
            checked += 1
    assert checked >= 8
    assert any("dsnet train" in line for line in seen), seen
