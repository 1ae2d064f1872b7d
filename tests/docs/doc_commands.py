"""Shell commands quoted in README.md and docs/*.md, found and checked against the real CLIs.

A command is a ``make``, ``softmask``, ``dsnet``, ``torchrun ... -m dsnet_trainer.cli`` or
``python -m pytest`` invocation in a fenced block (no language, or bash/sh/shell/console) or in
an inline code span. Checks, without running anything:

* ``softmask`` / ``dsnet``: every subcommand exists (``a|b`` alternatives: each one), every
  option is one of that command's options, and a literal value of a ``Choice`` option is one of
  its choices;
* ``make``: every target exists and ``make -n`` accepts the line (a variable set on the command
  line must be one the Makefile uses);
* ``python -m pytest PATH``: the test file exists.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
PLACEHOLDER = "X_PLACEHOLDER"


@dataclass(frozen=True)
class DocCommand:
    file: str      # path relative to the repository
    line: int      # 1-based line of the command's first line
    text: str      # one simple command (no ;, &&, |), comments removed
    fenced: bool

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def program(self) -> str:
        words = self.text.split()
        if not words:
            return ""
        if words[0] == "torchrun":
            return "dsnet" if "dsnet_trainer.cli" in words else "softmask" if "softmask_builder.cli" in words else ""
        if words[0] == "python" and words[1:3] == ["-m", "pytest"]:
            return "pytest"
        return words[0] if words[0] in ("make", "softmask", "dsnet") else ""


def _strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def _simple_commands(text: str) -> list[str]:
    # `a|b` without spaces is an alternative (softmask build deeplesion|lidc); ` | ` is a pipe.
    parts = re.split(r";|&&|\|\||\s\|\s", text)
    out = []
    for part in parts:
        part = part.strip()
        part = re.sub(r"^(?:do|then|else)\s+", "", part)
        if part:
            out.append(part)
    return out


def find_commands(path: Path) -> list[DocCommand]:
    rel = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[DocCommand] = []
    fence: str | None = None
    lang = ""
    pending, start = "", 0
    for no, line in enumerate(lines, 1):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if m and (fence is None or m.group(1).startswith(fence)):
            if fence is None:
                fence, lang = m.group(1), m.group(2).lower()
            else:
                fence = None
            continue
        if fence is not None:
            if lang not in SHELL_LANGS:
                continue
            body = _strip_comment(line).rstrip()
            if not pending:
                start = no
            if body.endswith("\\"):
                pending += body[:-1] + " "
                continue
            full, pending = pending + body, ""
            for cmd in _simple_commands(full):
                found.append(DocCommand(rel, start, cmd, True))
        else:
            for span in re.findall(r"`([^`\n]+)`", line):
                for cmd in _simple_commands(span):
                    c = DocCommand(rel, no, cmd, False)
                    if c.program in ("make", "softmask", "dsnet") and len(cmd.split()) > 1:
                        found.append(c)
    return [c for c in found if c.program]


def all_commands() -> list[DocCommand]:
    return [c for path in DOC_FILES for c in find_commands(path)]


def _tokens(text: str) -> list[str]:
    text = text.replace("…", PLACEHOLDER).replace("[", " ").replace("]", " ")
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _is_literal(value: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9_.-]+(?:\|[a-z0-9_.-]+)*", value)) and PLACEHOLDER.lower() not in value


def check_click(cmd: DocCommand, root: click.Group) -> list[str]:
    """Problems of one softmask/dsnet command (empty when it matches the CLI)."""
    words = _tokens(cmd.text)
    if words[0] == "torchrun":
        words = words[words.index("-m") + 1:]
    program, words = ("dsnet" if "dsnet_trainer" in cmd.text or cmd.program == "dsnet" else "softmask"), words[1:]
    commands: list[tuple[str, click.Command]] = [(program, root)]
    i = 0
    while i < len(words) and all(isinstance(c, click.Group) for _, c in commands):
        word = words[i]
        if word.startswith("-"):
            break
        nxt = []
        for name, group in commands:
            for alt in word.split("|"):
                sub = group.commands.get(alt)  # type: ignore[union-attr]
                if sub is None:
                    return [f"{cmd.where}: `{name} {alt}` is not a command ({cmd.text!r})"]
                nxt.append((f"{name} {alt}", sub))
        commands = nxt
        i += 1
    problems = []
    for name, command in commands:
        ctx = click.Context(command)
        options = {}
        for p in command.get_params(ctx):
            if isinstance(p, click.Option):
                for opt in p.opts + p.secondary_opts:
                    options[opt] = p
        j = i
        while j < len(words):
            word = words[j]
            if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d+(\.\d+)?", word):
                opt, _, inline = word.partition("=")
                param = options.get(opt)
                if param is None:
                    problems.append(f"{cmd.where}: `{name}` has no option {opt} ({cmd.text!r})")
                elif not param.is_flag and not param.count:
                    value = inline or (words[j + 1] if j + 1 < len(words) else "")
                    if isinstance(param.type, click.Choice) and _is_literal(value):
                        bad = [v for v in value.split("|") if v not in param.type.choices]
                        if bad:
                            problems.append(f"{cmd.where}: `{name} {opt}` does not accept {bad} "
                                            f"(choices {list(param.type.choices)})")
                    if not inline:
                        j += 1
            j += 1
    return problems


def makefile_variables(text: str) -> set[str]:
    used = set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", text))
    assigned = set(re.findall(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)\s*[?:+]?=", text, re.M))
    return used | assigned


def check_make(cmd: DocCommand, makefile: str) -> list[str]:
    words = _tokens(cmd.text)[1:]
    assigns = [w for w in words if "=" in w and not w.startswith("-")]
    targets = [w for w in words if "=" not in w and not w.startswith("-")]
    problems = []
    known = makefile_variables(makefile)
    for a in assigns:
        name = a.split("=", 1)[0]
        if name not in known:
            problems.append(f"{cmd.where}: the Makefile has no variable {name} ({cmd.text!r})")
    if any(PLACEHOLDER in w or "|" in w or "…" in w for w in targets):
        return problems + [f"{cmd.where}: placeholder in a make target ({cmd.text!r})"]
    clean = [a for a in assigns if PLACEHOLDER not in a and "..." not in a]
    # VENV/STAMP point nowhere, so that even a recursive $(MAKE) line run under -n executes nothing.
    proc = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), *targets, *clean, "VENV=/nonexistent/venv", "STAMP="],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        problems.append(f"{cmd.where}: `make -n {' '.join(targets)}` fails: {proc.stderr.strip()[-300:]}")
    return problems


def check_pytest(cmd: DocCommand) -> list[str]:
    paths = [w.split("::")[0] for w in _tokens(cmd.text)[3:] if not w.startswith("-")]
    return [f"{cmd.where}: {p} does not exist" for p in paths if not (ROOT / p).exists()]
