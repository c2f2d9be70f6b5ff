"""The ``plan``, ``export`` and ``sync`` commands of ``mts-faces`` (see :mod:`.lifecycle`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import urlsplit

from ._cli_support import add_image_key_option, image_keys_from
from .lifecycle import (
    EXPORT_FIELDS,
    PlannedRow,
    SyncPlan,
    apply_removals,
    apply_renames,
    describe_plan,
    export_library,
    plan,
    plan_sync,
)
from .manifest import FaceRow, ManifestEntry, read_manifest
from .shards import Shard


def _cli() -> Any:
    from . import cli

    return cli


@contextlib.contextmanager
def _manifest_entries(args: argparse.Namespace) -> Iterator[Iterator[ManifestEntry]]:
    cli = _cli()
    stream: IO[bytes] = cli._open_manifest(args.manifest)
    try:
        yield read_manifest(stream, fmt=args.format, default_category=args.default_category)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


# --- plan -------------------------------------------------------------------------------------


def _cmd_plan(args: argparse.Namespace) -> int:
    cli = _cli()
    if args.output:
        cli._check_output(args.output, args.manifest, args.ledger)
    precheck = image_precheck(args)  # --check-images, as register's
    client = cli._client_from_args(args)
    with contextlib.ExitStack() as files:
        sink: TextIO | None = None
        if args.output:
            sink = files.enter_context(open(args.output, "w", encoding="utf-8"))
        entries = files.enter_context(_manifest_entries(args))

        def on_row(planned: PlannedRow) -> None:
            if sink is not None:
                sink.write(json.dumps(planned.to_dict(), ensure_ascii=False) + "\n")

        async def main() -> Any:
            async with client:
                return await plan(
                    client,
                    entries,
                    ledger=args.ledger,
                    check_existing=not args.no_check_existing,
                    keep=args.show,
                    on_row=on_row,
                    precheck=precheck,
                    image_keys=image_keys_from(args),
                )

        result = asyncio.run(main())
    for line in describe_plan(result):
        print(line)
    return int(cli.EXIT_OK)


# --- export -----------------------------------------------------------------------------------


def _export_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.output in (None, "-"):
        return "csv"
    suffix = Path(args.output).suffix.lower()
    if suffix in (".csv", ".jsonl"):
        return suffix[1:]
    raise _cli().UsageError(
        f"--output {args.output}: name a .csv or .jsonl file (or pass --format csv|jsonl)"
    )


def _cmd_export(args: argparse.Namespace) -> int:
    cli = _cli()
    fmt = _export_format(args)
    client = cli._client_from_args(args)
    with contextlib.ExitStack() as files:
        out: TextIO = sys.stdout
        if args.output not in (None, "-"):
            out = files.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
        writer = csv.DictWriter(out, EXPORT_FIELDS, lineterminator="\n")
        if fmt == "csv":
            writer.writeheader()

        async def main() -> int:
            count = 0
            async with client:
                async for record in export_library(client, args.category):
                    if fmt == "csv":
                        writer.writerow(record)
                    else:
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
            return count

        count = asyncio.run(main())
    sys.stderr.write(f"exported {count:,} faces of {len(args.category)} libraries\n")
    return int(cli.EXIT_OK)


# --- sync -------------------------------------------------------------------------------------


def _show_sync_plan(found: SyncPlan, stream: TextIO, show: int) -> None:
    stream.write(
        f"sync {', '.join(found.categories)}: remove {len(found.removals):,} "
        f"({'prune' if found.prune else 'no --prune: nothing is removed'}), "
        f"rename {len(found.renames):,}, then register as follows\n"
    )
    for removal in found.removals[:show]:
        what = "the whole person" if removal.face_id == "ALL" else removal.face_id
        url = f" {removal.image_url}" if removal.image_url else ""
        stream.write(f"  remove: {removal.category_id}/{removal.person_id} {what}{url}\n")
    for rename in found.renames[:show]:
        stream.write(
            f"  rename: {rename.category_id}/{rename.person_id} "
            f"{rename.old_name!r} -> {rename.new_name!r}\n"
        )
    for line in describe_plan(found.plan):
        stream.write(line + "\n")
    if found.outside:
        stream.write(f"  {found.outside:,} rows of other libraries are left out\n")
    stream.flush()


def _confirm(args: argparse.Namespace) -> bool:
    if args.yes:
        return True
    if args.manifest == "-" or not sys.stdin.isatty():
        raise _cli().UsageError("not on a terminal: pass --yes to apply the plan above")
    answer = input("apply this plan? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _cmd_sync(args: argparse.Namespace) -> int:
    cli = _cli()
    args.default_category = None
    ledger_path = cli._ledger_path(args)
    cli._check_output(args.output, args.manifest, ledger_path)
    overrides: dict[str, Any] = {}
    if args.timeout is not None:
        overrides["timeout"] = args.timeout

    with _manifest_entries(args) as entries:
        rows = list(shard_rows(args, entries))
    planning = cli._client_from_args(args, **overrides)

    async def make_plan() -> SyncPlan:
        async with planning:
            return await plan_sync(
                planning,
                rows,
                args.category,
                prune=args.prune,
                keep=args.show,
                shard=args.shard,
                image_keys=image_keys_from(args),
            )

    found = asyncio.run(make_plan())
    precheck = None
    if args.check_images:
        problems = _run_checks((r.image_url for r in found.to_register), args)
        precheck = problems.get if problems else None
        if problems:
            sys.stderr.write(f"  rows with an image that fails are skipped ({len(problems):,})\n")
    _show_sync_plan(found, sys.stderr, args.show)
    if args.dry_run:
        return int(cli.EXIT_OK)
    if not _confirm(args):
        sys.stderr.write("nothing done\n")
        return int(cli.EXIT_OK)

    client = cli._client_from_args(args, **overrides, **limiter_overrides(args))
    with contextlib.ExitStack() as files:
        output: TextIO = sys.stdout
        if args.output != "-":
            output = files.enter_context(open(args.output, "w", encoding="utf-8"))

        async def apply() -> tuple[Any, Any, tuple[int, list[str]]]:
            async with client:
                removed = await _removals(client, found, ledger_path, args.rebind_ledger)
                report = await cli.register_rows(
                    client,
                    iter(found.rows),
                    output,
                    ledger=ledger_path,
                    rebind_ledger=args.rebind_ledger,
                    settle=args.settle,
                    total=len(found.rows),
                    progress=not args.no_progress,
                    concurrency=args.concurrency,
                    precheck=(lambda row: precheck(row.image_url)) if precheck else None,
                    image_keys=image_keys_from(args),
                )
                renamed = await apply_renames(client, found.renames, client.tag_custom_person)
            await close_limiter(client)
            return removed, report, renamed

        try:
            removed, report, (renamed, rename_failures) = asyncio.run(apply())
        except cli.RunAborted as exc:
            sys.stderr.write(f"mts-faces sync: {exc.error}\n")
            cli.print_summary(exc.report)
            return int(cli.EXIT_FAILED_ROWS)
        except asyncio.CancelledError:
            return int(cli.EXIT_INTERRUPTED)
    sys.stderr.write(
        f"removed {removed.removed:,} (already gone {removed.already_gone:,}, failed "
        f"{len(removed.failed):,}); renamed {renamed:,} (failed {len(rename_failures):,})\n"
    )
    for failure in [*removed.failed, *rename_failures]:
        sys.stderr.write(f"  failed {failure}\n")
    cli.print_summary(report)
    if report.stopped:
        return int(cli.EXIT_INTERRUPTED)
    failed = report.failed or removed.failed or rename_failures
    return int(cli.EXIT_FAILED_ROWS if failed else cli.EXIT_OK)


async def _removals(client: Any, found: SyncPlan, ledger_path: str | None, rebind: bool) -> Any:
    """The removals, recorded in the ledger (opened and locked for them, then closed for the
    registrar to open)."""
    from . import __version__
    from .ledger import Ledger, LedgerIdentity

    if not found.removals or ledger_path is None:
        return await apply_removals(client, found.removals, None)
    credentials = await client.credentials.get_credentials()
    identity = LedgerIdentity(urlsplit(client.endpoint).netloc, credentials.access_key_id)
    ledger = Ledger(ledger_path, identity, rebind=rebind, version=__version__)
    await asyncio.to_thread(ledger.open)
    ledger.start_heartbeat()
    try:
        return await apply_removals(client, found.removals, ledger)
    finally:
        await ledger.aclose()


# --- image checks -----------------------------------------------------------------------------


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """``--check-images`` and its settings, on ``register`` and ``sync``."""
    cli = _cli()
    group = parser.add_argument_group("image checks (before any quota is spent)")
    group.add_argument(
        "--check-images",
        action="store_true",
        help="fetch each ImageUrl's headers first; rows whose image fails are skipped",
    )
    _image_settings(group, cli)


def _image_settings(group: Any, cli: Any) -> None:
    from .imagecheck import DEFAULT_MAX_IMAGE_BYTES

    group.add_argument(
        "--max-image-bytes",
        type=cli.positive_int,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="largest image accepted (default %(default)s)",
    )
    group.add_argument(
        "--image-concurrency", type=cli.positive_int, default=16, help="URLs checked at once"
    )
    group.add_argument(
        "--image-timeout", type=cli.non_negative, default=10.0, help="seconds per image request"
    )
    group.add_argument(
        "--allow-private-images",
        action="store_true",
        help="accept image hosts on private or loopback addresses",
    )


def _image_options(args: argparse.Namespace) -> Any:
    from .imagecheck import ImageCheckOptions

    return ImageCheckOptions(
        concurrency=args.image_concurrency,
        timeout=args.image_timeout,
        max_bytes=args.max_image_bytes,
        allow_private=args.allow_private_images,
    )


def _run_checks(urls: Iterator[str], args: argparse.Namespace) -> dict[str, str]:
    from .imagecheck import check_images

    problems = asyncio.run(check_images(urls, _image_options(args)))
    sys.stderr.write(f"image check: {len(problems):,} image URLs fail\n")
    return problems


def image_precheck(args: argparse.Namespace) -> Callable[[FaceRow], str | None] | None:
    """With ``--check-images``: check the manifest's image URLs now (reading it once) and
    return the precheck that skips the rows whose image failed; None without the flag."""
    if not getattr(args, "check_images", False):
        return None
    if args.manifest == "-":
        raise _cli().UsageError("--check-images reads the manifest twice: pass a file, not -")
    if not hasattr(args, "default_category"):
        args.default_category = getattr(args, "category", None)
    with _manifest_entries(args) as entries:
        urls = (e.image_url for e in entries if isinstance(e, FaceRow))
        problems = _run_checks(urls, args)
    return lambda row: problems.get(row.image_url)


def _cmd_check_images(args: argparse.Namespace) -> int:
    cli = _cli()
    with _manifest_entries(args) as entries:
        rows = [e for e in entries if isinstance(e, FaceRow)]
    problems = _run_checks((r.image_url for r in rows), args)
    failed = 0
    for row in rows:
        reason = problems.get(row.image_url)
        if reason is not None:
            failed += 1
            record = {"row": row.row, "image_url": row.image_url, "reason": reason}
            print(json.dumps(record, ensure_ascii=False))
    sys.stderr.write(f"rows {len(rows):,}: {failed:,} with an image that fails\n")
    return int(cli.EXIT_FAILED_ROWS if failed else cli.EXIT_OK)


# --- shards -----------------------------------------------------------------------------------


def _shard_type(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_shard_options(parser: argparse.ArgumentParser) -> None:
    """``--shard K/N``, ``--redis URL`` and ``--redis-key``, on ``register`` and ``sync``."""
    group = parser.add_argument_group("shards (one job over several processes or machines)")
    group.add_argument(
        "--shard",
        type=_shard_type,
        metavar="K/N",
        help="take only the persons that hash to shard K of N (each shard its own ledger)",
    )
    group.add_argument(
        "--redis",
        metavar="URL",
        help="share the quota (--qps) with every process using this Redis (redis://host:port/db)",
    )
    group.add_argument(
        "--redis-key",
        default="mts-faces:quota",
        help="name of the shared quota's keys in Redis (default %(default)s)",
    )


def shard_suffix(args: argparse.Namespace) -> str:
    """What the default ledger's name gains for a shard (``.shard-2-of-4``), else nothing."""
    shard: Shard | None = getattr(args, "shard", None)
    return "" if shard is None else f".shard-{shard.index}-of-{shard.count}"


def shard_rows(
    args: argparse.Namespace, entries: Iterator[ManifestEntry]
) -> Iterator[ManifestEntry]:
    """The entries of ``--shard`` (all of them without it)."""
    shard: Shard | None = getattr(args, "shard", None)
    return entries if shard is None else shard.rows(entries)


def limiter_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--redis``: the client's limiter, shared through Redis at ``--qps``."""
    url = getattr(args, "redis", None)
    if not url:
        return {}
    from ._redis_limiter import RedisWindowLimiter

    try:
        limiter = RedisWindowLimiter.from_url(url, key=args.redis_key, qps=args.qps)
    except ImportError:
        message = "--redis needs the redis package: pip install 'mts-faces[redis]'"
        raise _cli().UsageError(message) from None
    except ValueError as exc:
        raise _cli().UsageError(f"--redis {url}: {exc}") from None
    return {"limiter": limiter}


async def close_limiter(client: Any) -> None:
    """Close a limiter the command opened (``--redis``)."""
    aclose = getattr(client.limiter, "aclose", None)
    if aclose is not None:
        await aclose()


# --- parsers ----------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Attach ``plan``, ``export`` and ``sync`` to the subcommands of ``mts-faces``."""
    cli = _cli()
    pln = sub.add_parser(
        "plan", help="what register would do (against the library and a ledger); changes nothing"
    )
    pln.add_argument("manifest", help="CSV with a header, or JSON Lines; - for stdin")
    pln.add_argument("--format", choices=("csv", "jsonl"), help="default: guessed from content")
    pln.add_argument("--category", dest="default_category", help="CategoryId for rows without")
    pln.add_argument("--ledger", help="the job's ledger, read only (what it holds done)")
    pln.add_argument("--output", help="JSON Lines file of every row's decision")
    pln.add_argument(
        "--show", type=cli.positive_int, default=5, help="first rows shown of each decision"
    )
    pln.add_argument(
        "--no-check-existing", action="store_true", help="as register's: do not list libraries"
    )
    cli._add_client_options(pln)
    add_image_options(pln)
    add_image_key_option(pln)
    pln.set_defaults(run=_cmd_plan)

    exp = sub.add_parser("export", help="write libraries out as a manifest (CSV or JSON Lines)")
    exp.add_argument("--category", action="append", required=True, help="a CategoryId; repeat")
    exp.add_argument("--output", help="a .csv or .jsonl file (default: CSV on stdout)")
    exp.add_argument("--format", choices=("csv", "jsonl"), help="default: from --output")
    cli._add_client_options(exp)
    exp.set_defaults(run=_cmd_export)

    syn = sub.add_parser(
        "sync", help="make libraries match a manifest: register, rename, and (--prune) remove"
    )
    syn.add_argument("manifest", help="CSV with a header, or JSON Lines")
    syn.add_argument("--category", action="append", required=True, help="a CategoryId; repeat")
    syn.add_argument("--format", choices=("csv", "jsonl"), help="default: guessed from content")
    syn.add_argument(
        "--prune",
        action="store_true",
        help="also remove faces and persons the manifest does not hold",
    )
    syn.add_argument("--dry-run", action="store_true", help="show the plan and stop")
    syn.add_argument("--yes", action="store_true", help="apply without asking")
    syn.add_argument("--show", type=cli.positive_int, default=5, help="rows shown of each kind")
    syn.add_argument("--ledger", help="SQLite ledger (default: the manifest's path + .ledger)")
    syn.add_argument("--no-ledger", action="store_true", help="keep no ledger (no resume)")
    syn.add_argument("--rebind-ledger", action="store_true", help="as register's")
    syn.add_argument("--timeout", type=float, help="seconds one attempt may take")
    syn.add_argument("--settle", type=float, help="as register's")
    syn.add_argument("--output", default="-", help="JSONL of registration outcomes")
    syn.add_argument("--concurrency", type=cli.positive_int, help="calls in flight")
    syn.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    cli._add_client_options(syn)
    add_image_options(syn)
    add_image_key_option(syn)
    add_shard_options(syn)
    syn.set_defaults(run=_cmd_sync)

    chk = sub.add_parser(
        "check-images", help="check that the service can fetch each ImageUrl (no MTS call)"
    )
    chk.add_argument("manifest", help="CSV with a header, or JSON Lines; - for stdin")
    chk.add_argument("--format", choices=("csv", "jsonl"), help="default: guessed from content")
    chk.add_argument("--category", dest="default_category", help="CategoryId for rows without")
    _image_settings(chk.add_argument_group("image checks"), cli)
    chk.set_defaults(run=_cmd_check_images)
