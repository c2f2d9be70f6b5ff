"""``mts-faces emulate``: serve the emulator until SIGINT or SIGTERM.

Standard output: the URL on the first line (flushed at once, for scripts), then, when the key
pair was not taken from the environment, the demo pair as ``NAME=value`` lines. Everything
else, the statistics at exit included, goes to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

from .._cli_support import non_negative
from ._config import ACTIONS, RIVAL_CLIENTS, AccessKey, EmulatorConfig
from ._emulator import Emulator

ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"


def _actions(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(
            f"no action named in {text!r}; known: {', '.join(sorted(ACTIONS))}"
        )
    unknown = names - ACTIONS
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown actions {', '.join(sorted(unknown))}; known: {', '.join(sorted(ACTIONS))}"
        )
    return names


def _qps(text: str) -> float:
    value = non_negative(text)
    if 0 < value < 1:  # the quota counts whole calls: a window must hold at least one
        raise argparse.ArgumentTypeError(f"must be at least 1, or 0 for no quota; got {text}")
    return value


def _action_qps(text: str) -> tuple[str, float]:
    action, sep, value = text.partition("=")
    if not sep or action.strip() not in ACTIONS:
        raise argparse.ArgumentTypeError(
            f"expected ACTION=QPS with ACTION one of {', '.join(sorted(ACTIONS))}, got {text!r}"
        )
    try:
        return action.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"QPS must be a number, got {value!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``emulate`` subcommand to ``subparsers`` (sets ``run``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emulate",
        help="serve a local emulator of the custom-face API",
        description="Serve RegisterCustomFace, UnregisterCustomFace, ListCustomPersons and "
        "TagCustomPerson locally, with signature checks, the quota and injected faults. "
        "Prints the URL as the first line of standard output.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--qps",
        type=_qps,
        default=100.0,
        help="calls/s per account and action; 0: no quota",
    )
    parser.add_argument("--max-faces", type=int, default=10, help="faces per person")
    parser.add_argument("--seed", type=int, help="seed for faults, jitter and FaceIds")
    faults = parser.add_argument_group("faults (rates are 0..1 per call)")
    faults.add_argument(
        "--latency", type=non_negative, default=0.0, help="seconds added to each call"
    )
    faults.add_argument("--jitter", type=non_negative, default=0.0, help="plus uniform 0..JITTER s")
    faults.add_argument(
        "--latency-actions", type=_actions, help="comma-separated actions (default: all)"
    )
    faults.add_argument("--internal-error-rate", type=float, default=0.0, help="500 InternalError")
    faults.add_argument(
        "--unavailable-rate", type=float, default=0.0, help="503 ServiceUnavailable"
    )
    faults.add_argument("--drop-rate", type=float, default=0.0, help="close without answering")
    faults.add_argument(
        "--commit-timeout-rate",
        type=float,
        default=0.0,
        help="do the work, then hang and close without answering",
    )
    faults.add_argument("--hang", type=non_negative, default=600.0, help="seconds a hang lasts")
    faults.add_argument(
        "--late-commit-rate",
        type=float,
        default=0.0,
        help="registrations committed --late-commit-delay s after arrival, then answered",
    )
    faults.add_argument(
        "--late-commit-delay", type=float, default=5.0, help="seconds of a late commit"
    )
    faults.add_argument(
        "--malformed-listing-rate",
        type=float,
        default=0.0,
        help="listings answered without Categories, or with a face missing FaceId/ImageUrl",
    )
    faults.add_argument(
        "--fault-actions",
        type=_actions,
        default=frozenset({"RegisterCustomFace"}),
        help="comma-separated actions the faults apply to (default: RegisterCustomFace)",
    )
    quota = parser.add_argument_group("quota scope, network and a rival program")
    quota.add_argument(
        "--action-qps",
        type=_action_qps,
        action="append",
        default=[],
        metavar="ACTION=QPS",
        help="a quota of its own for one action (repeatable; others: --qps)",
    )
    quota.add_argument(
        "--network-delay", type=float, default=0.0, help="one-way delay, s, before the quota"
    )
    quota.add_argument(
        "--network-jitter", type=float, default=0.0, help="plus uniform 0..J s, each way"
    )
    quota.add_argument("--rival-qps", type=float, default=0.0, help="another program's calls/s")
    quota.add_argument("--rival-start", type=float, default=0.0, help="s after the first call")
    quota.add_argument("--rival-duration", type=float, help="s the rival runs (default: ever)")
    quota.add_argument("--rival-bursty", action="store_true", help="each second's calls at once")
    quota.add_argument(
        "--rival-client",
        choices=RIVAL_CLIENTS,
        default="plain",
        help="the rival: a separate process over httpx (plain, default) or Alibaba's SDK "
        "(official, the bench extra), or calls charged at exact times with no network (arrivals)",
    )
    quota.add_argument(
        "--no-retry-after",
        dest="retry_after",
        action="store_false",
        help="do not send x-acs-retry-after when throttling",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="serve https")
    tls.add_argument("--certfile", help="certificate (PEM); without it one is made on the spot")
    tls.add_argument("--keyfile", help="private key (PEM) of --certfile")
    tls.add_argument("--ca-out", help="write the made-up CA's PEM here, for clients to trust")
    parser.add_argument("--dump-library", help="write the stored libraries as JSON at exit")
    parser.set_defaults(run=run)
    return parser


def config_from_args(args: argparse.Namespace, key: AccessKey | None) -> EmulatorConfig:
    """The :class:`EmulatorConfig` the command line describes."""
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        qps=args.qps if args.qps > 0 else None,
        access_key=key,
        latency=args.latency,
        jitter=args.jitter,
        latency_actions=args.latency_actions,
        internal_error_rate=args.internal_error_rate,
        unavailable_rate=args.unavailable_rate,
        drop_rate=args.drop_rate,
        commit_timeout_rate=args.commit_timeout_rate,
        hang=args.hang,
        late_commit_rate=args.late_commit_rate,
        late_commit_delay=args.late_commit_delay,
        malformed_listing_rate=args.malformed_listing_rate,
        fault_actions=args.fault_actions,
        seed=args.seed,
        max_faces_per_person=args.max_faces,
        tls=bool(args.tls or args.certfile),
        certfile=args.certfile,
        keyfile=args.keyfile,
        action_qps=dict(args.action_qps),
        network_delay=args.network_delay,
        network_jitter=args.network_jitter,
        rival_qps=args.rival_qps,
        rival_start=args.rival_start,
        rival_duration=args.rival_duration,
        rival_bursty=args.rival_bursty,
        rival_client=args.rival_client,
        retry_after=args.retry_after,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``mts-faces emulate``; returns the exit status."""
    key_id, secret = os.environ.get(ENV_ID), os.environ.get(ENV_SECRET)
    key = AccessKey(key_id, secret) if key_id and secret else None
    try:
        config = config_from_args(args, key)
    except ValueError as exc:
        sys.stderr.write(f"mts-faces emulate: {exc}\n")
        return 2
    return asyncio.run(_serve(config, args, from_env=key is not None))


async def _serve(config: EmulatorConfig, args: argparse.Namespace, *, from_env: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    emulator = Emulator(config)
    async with emulator:
        if args.ca_out:  # before the URL line: a script may use the file as soon as it reads it
            emulator.write_ca(args.ca_out)
        print(emulator.url, flush=True)
        if from_env:
            sys.stderr.write(f"accepting the key pair of {ENV_ID} ({emulator.key.access_key_id})\n")
        else:
            print(f"{ENV_ID}={emulator.key.access_key_id}")
            print(f"{ENV_SECRET}={emulator.key.access_key_secret}", flush=True)
        quota = f"{config.qps:g} calls/s per account and action" if config.qps else "no quota"
        sys.stderr.write(f"emulator on {emulator.url}: {quota}; Ctrl-C to stop\n")
        sys.stderr.flush()
        await stop.wait()
        stats = emulator.stats
        if args.dump_library:
            with open(args.dump_library, "w", encoding="utf-8") as out:  # noqa: ASYNC230
                out.write(emulator.library_json())
    sys.stderr.write(
        f"emulator stats: {stats.requests:,} requests, {stats.accepted:,} accepted, "
        f"{stats.throttled:,} throttled, max {stats.max_window_accepted} accepted "
        f"in any 1 s window, {stats.faces_stored:,} faces stored\n"
    )
    report = stats.to_dict()
    if emulator.rival_report is not None:
        report["rival_report"] = emulator.rival_report
    sys.stderr.write(json.dumps(report, sort_keys=True) + "\n")
    sys.stderr.flush()
    return 0
