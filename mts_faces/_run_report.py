"""``--report run.html`` for the commands that run many calls: record, then write at the end.

The page is written however the run ends: completed, stopped by a first Ctrl-C, cancelled by
a second one, or failed; a run that is interrupted says so on the page. A report that cannot
be written is said on stderr and does not change the command's exit status.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from ._extras import import_extra
from .report import RunRecorder, write_report

if TYPE_CHECKING:
    from ._client import MtsFaceClient


REPORT_HELP = (
    "write an HTML report of the run (plots of calls per second, throttles, latency) at its "
    "end, also when interrupted; a .svg path gets the plots alone (the 'report' extra)"
)


class ReportSession:
    """The recorder attached to one client, and what the command adds at the end."""

    def __init__(self, path: str, client: MtsFaceClient, title: str) -> None:
        self.path = path
        self.title = title
        self.recorder = RunRecorder(quota=client.qps)
        client.add_attempt_hook(self.recorder)
        self.summary: dict[str, int] = {}
        self.failures: list[str] = []
        self.notes: list[str] = []

    def set_outcome(self, report: Any) -> None:
        """Take the counts and first failures of a run's report (any attrs class with int
        fields and ``first_failures``), and whether it stopped early."""
        if attrs.has(type(report)):
            for name, value in attrs.asdict(report, recurse=False).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    self.summary[name] = value
        self.failures = [str(f) for f in getattr(report, "first_failures", ())]
        if getattr(report, "stopped", False):
            self.notes.append("The run was stopped before the end of its input.")

    def mark_interrupted(self) -> None:
        """Say on the page that the run was cut short."""
        note = "The run was interrupted: this page shows it up to that point."
        if note not in self.notes:
            self.notes.append(note)

    def write(self) -> None:
        """Write the page; a failure is reported on stderr, not raised."""
        try:
            write_report(
                self.path,
                self.recorder,
                title=self.title,
                summary=self.summary,
                failures=self.failures,
                notes=self.notes,
            )
        except Exception as exc:
            sys.stderr.write(f"could not write the report {self.path}: {exc}\n")
        else:
            sys.stderr.write(f"report written to {self.path}\n")


def check_report_extra() -> None:
    """Refuse ``--report`` before any call when the plotting extra is missing."""
    import_extra("matplotlib", "--report")


@contextlib.contextmanager
def run_report(
    path: str | None, client: MtsFaceClient, *, title: str
) -> Iterator[ReportSession | None]:
    """Record ``client``'s attempts while the block runs, and write the page at its end,
    whatever ends it; ``path`` None records nothing."""
    if path is None:
        yield None
        return
    session = ReportSession(path, client, title)
    try:
        yield session
    except BaseException:
        session.mark_interrupted()
        session.write()
        raise
    session.write()
