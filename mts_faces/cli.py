"""The ``mts-faces`` command: register, verify, list, unregister, demo, and emulate.

Exit status: 0 when every row ended registered or skipped, 1 when any row failed, 2 for a
usage or configuration error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

from . import __version__
from ._cli_support import (
    add_image_key_option,
    add_logging_options,
    at_least_one,
    command_logging,
    fetch_credentials_now,
    image_keys_from,
    level_from_args,
    missing_extra,
    non_negative,
    positive_int,
)
from ._client import DEFAULT_QPS, DEFAULT_REGION, MtsFaceClient
from ._credentials import Credentials
from ._exceptions import AuthenticationError, MtsFacesError
from ._http import fast_backend
from ._progress import ProgressBar
from ._run_report import REPORT_HELP, check_report_extra, run_report
from .imagekey import ImageKeys
from .ledger import LedgerError
from .manifest import BadRow, FaceRow, ManifestEntry, read_manifest, sniff_format
from .registrar import Registrar, RegistrationReport

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class StrictModeStop(MtsFacesError):
    """``--strict``: the first bad row stops the run."""


class RunAborted(MtsFacesError):
    """A run ended by an error after it started; ``report`` holds what it did."""

    def __init__(self, error: MtsFacesError, report: RegistrationReport) -> None:
        super().__init__(str(error))
        self.error = error
        self.report = report


LEDGER_SUFFIX = ".ledger"


# --- shared options ---------------------------------------------------------------------------


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service")
    group.add_argument("--endpoint", help="explicit endpoint URL (e.g. the emulator's)")
    group.add_argument("--region", default=DEFAULT_REGION, help="region (default %(default)s)")
    group.add_argument("--vpc", action="store_true", help="use the VPC endpoint of the region")
    group.add_argument("--qps", type=at_least_one, default=DEFAULT_QPS, help="calls per second cap")
    group.add_argument("--signature-version", type=int, choices=(1, 3), default=3)
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http to a non-loopback endpoint (credentials travel unencrypted)",
    )
    group.add_argument("--ca-file", help="trust this CA bundle (e.g. a test emulator's)")


def _client_from_args(args: argparse.Namespace, **overrides: Any) -> MtsFaceClient:
    options: dict[str, Any] = dict(
        region_id=args.region,
        endpoint=args.endpoint,
        vpc=args.vpc,
        qps=args.qps,
        signature_version=args.signature_version,
        allow_insecure_http=args.allow_insecure_http,
        http_backend=fast_backend(),
    )
    if args.ca_file:
        options["verify"] = args.ca_file
    options.update(overrides)
    client = MtsFaceClient(**options)
    fetch_credentials_now(client.credentials)
    return client


# --- register ---------------------------------------------------------------------------------


def _open_manifest(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def _count_rows(path: str, fmt: str | None) -> int | None:
    """Data rows in a manifest file, for the progress bar (None for stdin)."""
    if path == "-" or not os.path.isfile(path):
        return None
    count = 0
    head = b""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                count += 1
                if count == 1:
                    head = line[:64]
    # A CSV's first non-blank line is its header. (A quoted cell spanning lines makes this an
    # estimate; it only feeds the progress bar.)
    is_csv = (fmt or sniff_format(head)) == "csv"
    return max(0, count - 1) if is_csv else count


async def _in_thread(
    entries: Iterator[ManifestEntry], chunk: int = 512, linger: float = 0.1
) -> AsyncIterator[ManifestEntry]:
    """Pull rows in a worker thread: a slow pipe on stdin must not stall the event loop."""

    def take() -> tuple[list[ManifestEntry], BaseException | None, bool]:
        # Rows read before a failure (a --strict stop, a read error) still go through: the
        # error is handed back beside them and raised only once they have been yielded.
        # A batch also ends after ``linger`` seconds, so that a slow producer on a pipe has
        # its rows registered (and a Ctrl-C noticed) without waiting for a full chunk.
        batch: list[ManifestEntry] = []
        deadline = time.monotonic() + linger
        try:
            for entry in entries:
                batch.append(entry)
                if len(batch) >= chunk or time.monotonic() >= deadline:
                    return batch, None, False
        except Exception as exc:
            return batch, exc, True
        return batch, None, True

    while True:
        batch, error, finished = await asyncio.to_thread(take)
        for entry in batch:
            yield entry
        if error is not None:
            raise error
        if finished:
            return


def _strict(entries: Iterator[ManifestEntry]) -> Iterator[ManifestEntry]:
    for entry in entries:
        if isinstance(entry, BadRow):
            raise StrictModeStop(f"--strict: stopping at the first bad row: {entry}")
        yield entry


async def register_rows(
    client: MtsFaceClient,
    entries: Iterator[ManifestEntry],
    output: TextIO,
    *,
    ledger: str | None = None,
    rebind_ledger: bool = False,
    settle: float | None = None,
    total: int | None = None,
    progress: bool = True,
    check_existing: bool = True,
    concurrency: int | None = None,
    collect_faces: bool = False,
    precheck: Callable[[FaceRow], str | None] | None = None,
    image_keys: ImageKeys | None = None,
) -> RegistrationReport:
    """Register ``entries``, writing one JSON line per outcome to ``output`` (and one
    ``{"event": "repair", ...}`` line per duplicate the end-of-run verification found).
    ``precheck``: a reason it gives for a row skips it unsent (``--check-images``).
    ``image_keys``: how images are keyed (``--ignore-url-param``).

    Raises :class:`RunAborted` (with the report) when the ledger or the credentials fail.
    """
    bar = ProgressBar() if progress else None
    registrar = Registrar(
        client,
        ledger=ledger,
        rebind_ledger=rebind_ledger,
        settle=settle,
        progress=bar,
        total=total,
        check_existing=check_existing,
        concurrency=concurrency,
        collect_faces=collect_faces,
        precheck=precheck,
        image_keys=image_keys,
    )
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            sys.stderr.write("\ninterrupted: finishing calls in flight (Ctrl-C again to abort)\n")
            registrar.stop()
        elif main is not None:
            main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, on_interrupt)
    try:
        async for outcome in registrar.run(_in_thread(entries)):
            output.write(json.dumps(outcome.to_dict(), ensure_ascii=False) + "\n")
        for repair in registrar.report.repairs:
            record = {"event": "repair", **repair.to_dict()}
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
    except (LedgerError, AuthenticationError) as exc:
        raise RunAborted(exc, registrar.report) from exc
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
        if bar is not None:
            bar.close()
        output.flush()
    return registrar.report


def print_summary(report: RegistrationReport, stream: TextIO | None = None) -> None:
    """The end-of-run summary: counts, skip reasons, time and rates."""
    out = stream or sys.stderr
    out.write(
        f"rows {report.rows:,}: registered {report.registered:,}"
        f" (from ledger {report.resumed:,}, reconciled {report.reconciled:,},"
        f" registered again {report.reregistered:,}),"
        f" skipped {report.skipped:,}, failed {report.failed:,}"
        f" (in doubt {report.in_doubt:,}), not attempted {report.not_attempted:,}\n"
    )
    if not report.library_checked:
        out.write(
            f"  NOTE: the library was not checked (--no-check-existing): {report.unchecked:,} "
            "rows counted as registered from the ledger alone; their faces may be gone "
            "(run without --no-check-existing to check them)\n"
        )
    if report.duplicates_found:
        out.write(f"  duplicates found {report.duplicates_found:,}, repaired {report.repaired:,}\n")
    for reason, count in sorted(report.skip_reasons.items(), key=lambda kv: -kv[1]):
        out.write(f"  skipped {count:,}: {reason}\n")
    for failure in report.first_failures:
        out.write(f"  failed {failure}\n")
    if report.failed > len(report.first_failures):
        out.write(f"  (and {report.failed - len(report.first_failures):,} more failed rows)\n")
    out.write(
        f"elapsed {report.elapsed:.2f} s, {report.calls:,} API calls"
        f" ({report.calls_per_second:.1f} calls/s, {report.registrations_per_second:.1f} faces/s)"
        + (", stopped early" if report.stopped else "")
        + "\n"
    )
    if report.stopped or report.in_doubt:
        if report.ledger:
            out.write(
                f"to resume, run the same command again (ledger {report.ledger}): finished rows "
                "are not sent again and rows in doubt are settled first\n"
            )
        else:
            out.write(
                "to resume, run the same command again: rows already stored are found in the "
                "library and skipped (keep a ledger to settle rows in doubt)\n"
            )
    out.flush()


def _ledger_path(args: argparse.Namespace) -> str | None:
    """The ledger the run keeps: ``--ledger``, else beside the manifest; None: ``--no-ledger``."""
    if args.no_ledger:
        if args.ledger:
            raise UsageError("--ledger and --no-ledger exclude each other")
        return None
    if args.ledger:
        return str(args.ledger)
    if args.manifest == "-":
        raise UsageError(
            "reading stdin: name a ledger with --ledger PATH (so that the job can be "
            "resumed), or pass --no-ledger"
        )
    from ._lifecycle_cli import shard_suffix

    return str(args.manifest) + shard_suffix(args) + LEDGER_SUFFIX


def _same_file(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def _check_output(output: str, manifest: str, ledger: str | None) -> None:
    """Refuse an ``--output`` that would overwrite the manifest or the ledger."""
    if output == "-":
        return
    if manifest != "-" and _same_file(output, manifest):
        raise UsageError(f"--output {output} is the manifest: writing it would destroy the input")
    if ledger is not None:
        for path in (ledger, ledger + "-wal", ledger + "-shm"):
            if _same_file(output, path):
                raise UsageError(f"--output {output} is the ledger {path}")


class UsageError(MtsFacesError, ValueError):
    """A command line that cannot run as given."""


def _whole_file_checked(path: str, entries: Iterator[ManifestEntry]) -> Iterator[ManifestEntry]:
    """``entries``, once its first one shows the file can be read at all: a file that is
    empty, binary (an XLSX workbook, a PDF ...) or has no usable header is refused as a whole
    (a usage error), before any client, ledger or output file is set up."""
    first = next(entries, None)
    if first is None:
        return iter(())
    if isinstance(first, BadRow) and first.row == 0:
        where = first.reason if first.line is None else str(first)
        raise UsageError(f"manifest {path}: {where}")
    return itertools.chain((first,), entries)


def _cmd_register(args: argparse.Namespace) -> int:
    if args.journal:
        raise UsageError(
            "--journal is gone: the job record is now a SQLite ledger (--ledger PATH, kept "
            "beside the manifest by default); an old JSON Lines journal is not imported"
        )
    ledger = _ledger_path(args)
    _check_output(args.output, args.manifest, ledger)
    overrides: dict[str, Any] = {}
    if args.timeout is not None:
        overrides["timeout"] = args.timeout
    if args.report:
        check_report_extra()
    from ._lifecycle_cli import close_limiter, image_precheck, limiter_overrides, shard_rows

    with contextlib.ExitStack() as files:
        stream = _open_manifest(args.manifest)
        if stream is not sys.stdin.buffer:
            files.callback(stream.close)
        entries = _whole_file_checked(
            args.manifest, read_manifest(stream, fmt=args.format, default_category=args.category)
        )
        entries = shard_rows(args, entries)  # --shard K/N
        if args.strict:
            entries = _strict(entries)
        precheck = image_precheck(args)  # --check-images: before any quota is spent
        client = _client_from_args(args, **overrides, **limiter_overrides(args))
        if args.settle is not None and args.settle < client.timeout:
            sys.stderr.write(
                f"warning: --settle {args.settle:g} is shorter than the request timeout "
                f"{client.timeout:g}s: duplicates may remain; `mts-faces verify --repair` "
                "removes them\n"
            )
        # The total only feeds the progress bar: without one, the manifest is read once.
        total = None if args.no_progress or args.shard else _count_rows(args.manifest, args.format)
        output: TextIO = sys.stdout
        if args.output != "-":
            output = files.enter_context(open(args.output, "w", encoding="utf-8"))
        # Written when this block ends, however the run ended.
        title = f"mts-faces register {args.manifest}"
        session = files.enter_context(run_report(args.report, client, title=title))

        async def main() -> RegistrationReport:
            async with client, contextlib.AsyncExitStack() as closing:
                closing.push_async_callback(close_limiter, client)
                return await register_rows(
                    client,
                    entries,
                    output,
                    ledger=ledger,
                    rebind_ledger=args.rebind_ledger,
                    settle=args.settle,
                    total=total,
                    progress=not args.no_progress,
                    check_existing=not args.no_check_existing,
                    concurrency=args.concurrency,
                    precheck=precheck,
                    image_keys=image_keys_from(args),
                )

        try:
            report = asyncio.run(main())
        except StrictModeStop as exc:
            sys.stderr.write(f"{exc}\n")
            return EXIT_FAILED_ROWS
        except RunAborted as exc:
            if session is not None:
                session.set_outcome(exc.report)
            sys.stderr.write(f"mts-faces register: {exc.error}\n")
            print_summary(exc.report)
            return EXIT_FAILED_ROWS
        except asyncio.CancelledError:
            if session is not None:
                session.mark_interrupted()
            return EXIT_INTERRUPTED
        if session is not None:
            session.set_outcome(report)
    print_summary(report)
    if report.stopped:
        return EXIT_INTERRUPTED
    return EXIT_FAILED_ROWS if report.failed else EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from .ledger import read_face_ids
    from .reconcile import Gate, ServiceCalls, find_duplicates, repair

    async def main() -> int:
        async with _client_from_args(args) as client:
            listing = await client.list_custom_persons(args.category, args.person)
            keys = image_keys_from(args)
            duplicates = list(find_duplicates(listing, keys))
            keep = read_face_ids(args.ledger, keys) if args.ledger else (lambda dup: None)
            calls = ServiceCalls(client, Gate(4))
            done = await repair(calls, duplicates, keep, apply=args.repair)
        faces = sum(1 for _ in listing.iter_faces())
        extras = sum(len(r.removed) for r in done)
        for record in done:
            print(json.dumps({"event": "repair", **record.to_dict()}, ensure_ascii=False))
        action = "removed" if args.repair else "would remove (dry run; --repair removes them)"
        failed = [r for r in done if r.error]
        sys.stderr.write(
            f"verify {args.category}: {faces:,} faces, {len(done):,} images stored more "
            f"than once, {extras:,} extra FaceIds {action}\n"
        )
        for record in failed:
            sys.stderr.write(f"  {record.error}\n")
        if not done or (args.repair and not failed):
            return EXIT_OK
        return EXIT_FAILED_ROWS

    return asyncio.run(main())


# --- list and unregister ----------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with _client_from_args(args) as client:
            listing = await client.list_custom_persons(args.category, args.person)
        if args.json:
            for category, person, face in listing.iter_faces():
                record = {
                    "category_id": category.category_id,
                    "person_id": person.person_id,
                    "person_name": person.person_name,
                    "face_id": face.face_id,
                    "image_url": face.image_url,
                }
                print(json.dumps(record, ensure_ascii=False))
            return EXIT_OK
        for category in listing.categories:
            print(
                f"{category.category_id}"
                + (f"  ({category.category_name})" if category.category_name else "")
            )
            for person in category.persons:
                label = f" ({person.person_name})" if person.person_name else ""
                print(f"  {person.person_id}{label}: {len(person.faces)} faces")
                for face in person.faces:
                    print(f"    {face.face_id}  {face.image_url}")
        return EXIT_OK

    return asyncio.run(main())


def _cmd_unregister(args: argparse.Namespace) -> int:
    face_id = "ALL" if args.all else args.face
    if not face_id:
        sys.stderr.write("unregister: pass --face FACE_ID, or --all for every face of the person\n")
        return EXIT_USAGE

    async def main() -> int:
        async with _client_from_args(args) as client:
            ack = await client.unregister_custom_face(args.category, args.person, face_id)
        print(
            f"unregistered {face_id} of {args.category}/{args.person} (RequestId {ack.request_id})"
        )
        return EXIT_OK

    return asyncio.run(main())


# --- demo -------------------------------------------------------------------------------------

DEMO_PERSONS = 100
DEMO_FACES_PER_PERSON = 10


def write_demo_manifest(path: Path, persons: int = DEMO_PERSONS) -> int:
    """A CSV of ``persons`` × 10 faces, plus rows that show the cap, a duplicate and a bad row."""
    lines = ["category_id,person_id,image_url,person_name"]
    for p in range(persons):
        for i in range(DEMO_FACES_PER_PERSON):
            lines.append(
                f"demo-stars,person-{p:04d},https://img.example.com/{p:04d}/{i}.jpg,Person {p}"
            )
    lines.append("demo-stars,person-0000,https://img.example.com/0000/extra.jpg,Person 0")  # 11th
    lines.append("demo-stars,PERSON-0001,https://img.example.com/0001/3.jpg,Person 1")  # duplicate
    lines.append("demo-stars,person-9999,not-a-url,Nobody")  # bad row
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .emulator import Emulator, EmulatorConfig

    if args.report:
        check_report_extra()

    async def main() -> RegistrationReport:
        config = EmulatorConfig(qps=args.qps, latency=args.latency, jitter=args.latency / 3)
        async with Emulator(config) as emulator:
            key = emulator.key
            sys.stderr.write(f"emulator listening on {emulator.url} (quota {args.qps:g} calls/s)\n")
            with tempfile.TemporaryDirectory() as folder:
                manifest = Path(folder) / "demo-manifest.csv"
                total = write_demo_manifest(manifest, args.persons)
                sys.stderr.write(
                    f"manifest: {total:,} rows ({args.persons} persons x 10 faces + 3 extra)\n"
                )
                credentials = Credentials(key.access_key_id, key.access_key_secret)
                async with MtsFaceClient(
                    credentials=credentials,
                    endpoint=emulator.url,
                    qps=args.qps,
                    http_backend=fast_backend(),
                ) as client:
                    # Opening is instant; rows are then pulled in a worker thread.
                    title = f"mts-faces demo: {total:,} rows at {args.qps:g} calls/s"
                    with (
                        open(manifest, "rb") as stream,  # noqa: ASYNC230
                        open(os.devnull, "w") as sink,  # noqa: ASYNC230
                        run_report(args.report, client, title=title) as session,
                    ):
                        output = sink if not args.outcomes else sys.stdout
                        report = await register_rows(
                            client, read_manifest(stream), output, total=total, collect_faces=True
                        )
                        if session is not None:
                            session.set_outcome(report)
            stats = emulator.stats
            sys.stderr.write(
                f"emulator: accepted {stats.accepted:,}, throttled {stats.throttled:,}, "
                f"max {stats.max_window_accepted} accepted in any 1 s window\n"
            )
            return report

    report = asyncio.run(main())
    print_summary(report, sys.stdout)
    persons = len(report.faces)
    faces = sum(len(ids) for ids in report.faces.values())
    print(f"collected {faces:,} FaceIds for {persons:,} persons")
    return EXIT_OK if report.failed <= 1 else EXIT_FAILED_ROWS  # the one bad row is expected


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mts-faces`` with every subcommand attached."""
    from .emulator._command import add_parser as add_emulate

    parser = argparse.ArgumentParser(
        prog="mts-faces",
        description="Register faces in Alibaba Cloud MTS custom figure libraries.",
        epilog="Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET "
        "(and ALIBABA_CLOUD_SECURITY_TOKEN for STS).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_logging_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reg = sub.add_parser("register", help="register every face of a manifest (CSV or JSONL)")
    reg.add_argument("manifest", help="CSV with a header, or JSON Lines; - for stdin")
    reg.add_argument("--format", choices=("csv", "jsonl"), help="default: guessed from content")
    reg.add_argument("--category", help="CategoryId for rows that have none")
    reg.add_argument(
        "--ledger",
        help=f"SQLite ledger of the job (default: the manifest's path + {LEDGER_SUFFIX}); "
        "rerun the same command to resume",
    )
    reg.add_argument("--no-ledger", action="store_true", help="keep no ledger (no resume)")
    reg.add_argument(
        "--rebind-ledger",
        action="store_true",
        help="accept a ledger written for another endpoint or AccessKeyId",
    )
    reg.add_argument("--journal", help=argparse.SUPPRESS)
    reg.add_argument("--timeout", type=float, help="seconds one attempt may take, answer included")
    reg.add_argument(
        "--settle",
        type=non_negative,
        help="seconds after a lost answer before a row may be sent again (default: 3 x "
        "timeout, at least 5; shorter than --timeout may leave duplicates for verify --repair)",
    )
    reg.add_argument("--output", default="-", help="JSONL of outcomes (default: stdout)")
    reg.add_argument("--strict", action="store_true", help="stop at the first bad row")
    reg.add_argument(
        "--concurrency", type=positive_int, help="calls in flight (default: from latency)"
    )
    reg.add_argument(
        "--no-check-existing",
        action="store_true",
        help="do not list existing faces first (the cap then counts this input only)",
    )
    reg.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    reg.add_argument("--report", metavar="PATH", help=REPORT_HELP)
    _add_client_options(reg)
    from ._lifecycle_cli import add_image_options, add_shard_options

    add_image_options(reg)
    add_image_key_option(reg)
    add_shard_options(reg)
    reg.set_defaults(run=_cmd_register)

    lst = sub.add_parser("list", help="list libraries, persons and faces")
    lst.add_argument("--category", help="only this CategoryId")
    lst.add_argument("--person", help="only this PersonId")
    lst.add_argument("--json", action="store_true", help="one JSON object per face")
    _add_client_options(lst)
    lst.set_defaults(run=_cmd_list)

    unreg = sub.add_parser("unregister", help="remove a face, all faces of a person, or a library")
    unreg.add_argument("--category", required=True)
    unreg.add_argument("--person", required=True, help="PersonId, or ALL for the whole library")
    unreg.add_argument("--face", help="FaceId to remove")
    unreg.add_argument("--all", action="store_true", help="remove every face of the person")
    _add_client_options(unreg)
    unreg.set_defaults(run=_cmd_unregister)

    ver = sub.add_parser(
        "verify", help="find faces stored twice (same person and image) in a library"
    )
    ver.add_argument("--category", required=True, help="the CategoryId to check")
    ver.add_argument("--person", help="only this PersonId")
    ver.add_argument(
        "--repair", action="store_true", help="unregister the extra FaceIds (default: dry run)"
    )
    ver.add_argument("--ledger", help="keep the FaceIds this ledger holds (else the first listed)")
    add_image_key_option(ver)
    _add_client_options(ver)
    ver.set_defaults(run=_cmd_verify)

    demo = sub.add_parser("demo", help="register 1,000 faces against a local emulator")
    demo.add_argument(
        "--persons", type=positive_int, default=DEMO_PERSONS, help="persons of 10 faces"
    )
    demo.add_argument("--qps", type=at_least_one, default=DEFAULT_QPS, help="the emulator's quota")
    demo.add_argument(
        "--latency", type=non_negative, default=0.05, help="emulated service latency (s)"
    )
    demo.add_argument("--outcomes", action="store_true", help="print each outcome as JSON")
    demo.add_argument("--report", metavar="PATH", help=REPORT_HELP)
    demo.set_defaults(run=_cmd_demo)

    add_emulate(sub)
    from ._lifecycle_cli import add_parsers as add_lifecycle

    add_lifecycle(sub)
    for command in sub.choices.values():  # every subcommand, whoever added it
        add_logging_options(command, top_level=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mts-faces`` with ``argv`` (default: the process arguments); return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with command_logging(level_from_args(args)):
            return int(args.run(args))
    except ImportError as exc:
        message = missing_extra(exc, args.command)
        if message is None:
            raise
        sys.stderr.write(f"{message}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MtsFacesError as exc:
        sys.stderr.write(f"mts-faces {args.command}: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED_ROWS
    except OSError as exc:
        sys.stderr.write(f"mts-faces {args.command}: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
