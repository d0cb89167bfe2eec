"""Long commands talk when their output is not a terminal: plain progress lines, throttled, the last at the end."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from nmid_desktop.commands._common import ProgressLine, drive
from nmid_desktop.core.jobs import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_prints_plain_lines_at_most_every_interval_and_the_last_at_close() -> None:
    stream = io.StringIO()  # not a terminal, like a log file or CI
    clock = _Clock()
    line = ProgressLine(stream, interval_s=5.0, clock=clock)
    for done in range(10):
        clock.now = done * 1.0  # one report a second
        line(Progress(done, 10, f"image{done}.png"))
    line.close()
    lines = stream.getvalue().splitlines()
    # the first at once, then at 5 s, then the latest at the end; no carriage returns
    assert lines == ["0/10 image0.png", "5/10 image5.png", "9/10 image9.png"]
    assert "\r" not in stream.getvalue()


def test_progress_line_escapes_file_names() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line(Progress(1, 2, "evil\x1b[31m.png"))
    line.close()
    assert "\x1b" not in stream.getvalue() and "\\x1b[31m" in stream.getvalue()


def test_drive_reports_a_long_job_on_a_non_tty_stderr(capsys: pytest.CaptureFixture) -> None:
    def job() -> Iterator[Progress]:
        for i in range(3):
            yield Progress(i, 3, "working")
        return "finished"

    assert drive(job()) == "finished"  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.startswith("0/3 working\n") and err.rstrip().endswith("2/3 working")
