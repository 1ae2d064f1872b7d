"""Progress off a terminal is a line per 10 % (CI logs, `make | tee`), on a terminal a tqdm bar,
and nothing for quick steps or with --no-progress (issue 24). Expected lines written out by hand."""

from __future__ import annotations

import io

from softmask_builder.core.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _pcts(text: str) -> list[str]:
    return [line.split("(")[1].split(")")[0] for line in text.splitlines()]


def test_lines_every_ten_percent_off_a_terminal():
    out = io.StringIO()
    with progress(20, desc="phantom", unit="case", stream=out, delay_s=0.0) as bar:
        for _ in range(20):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert _pcts(out.getvalue()) == [f"{p} %" for p in range(10, 101, 10)]
    assert lines[0].startswith("phantom: 2/20 cases (10 %) after ") and lines[-1].startswith("phantom: 20/20 cases")


def test_uneven_steps_print_once_per_crossing():
    out = io.StringIO()
    bar = progress(7, desc="build", unit="sample", stream=out, delay_s=0.0)
    for n in (3, 3, 1):  # 42 %, 85 %, 100 %
        bar.update(n)
    bar.close()
    assert _pcts(out.getvalue()) == ["42 %", "85 %", "100 %"]


def test_quick_steps_and_no_progress_are_silent():
    out = io.StringIO()
    with progress(10, desc="x", unit="item", stream=out) as bar:  # default delay 2 s: done sooner
        bar.update(10)
    with progress(10, desc="x", unit="item", stream=out, enabled=False, delay_s=0.0) as bar:
        bar.update(10)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar():
    out = _Tty()
    with progress(4, desc="predict", unit="crop", stream=out, enabled=True) as bar:
        for _ in range(4):
            bar.update(1)
    text = out.getvalue()
    assert "predict" in text and "4/4" in text and "\r" in text  # tqdm redraws in place
    assert "(100 %) after" not in text
