"""The emulated service, apart from HTTP: one request in, one outcome out.

Order of the checks, each answering with the service's error: method and path, key,
timestamp, signature, nonce, action and version, quota, parameters. A request that passes
them all is *accepted* (charged to its key's quota); then a fault may be drawn for it, and
its work is done at once or, with latency, handed back as a :class:`Deferred` for the server
to finish after the delay.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from . import _errors as errors
from . import _stats as kinds
from ._actions import execute, validate
from ._config import ACTIONS, LIST_CUSTOM_PERSONS, REGISTER_CUSTOM_FACE, EmulatorConfig
from ._library import Library
from ._rival_client import RIVAL_AGENT
from ._stats import EmulatorStats, StatsRecorder
from ._verify import API_VERSION, NonceCache, SignedRequest, Verifier, decode_params
from ._window import Quota, Rival, retry_after_ms

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"


@attrs.frozen
class Request:
    """One HTTP request as received: raw target (path and query), headers, body."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]]
    """(lower-case name, value) pairs in the order received."""
    body: bytes = b""


@attrs.frozen
class Reply:
    """Answer with this status and JSON body."""

    status: int
    body: bytes
    request_id: str
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (``x-acs-retry-after`` on throttling)."""


@attrs.frozen
class Drop:
    """Close the connection without answering."""


@attrs.frozen
class Hang:
    """Say nothing for ``seconds``, then close the connection."""

    seconds: float


Outcome = Reply | Drop | Hang


@attrs.frozen
class Deferred:
    """Wait ``delay`` seconds, then call ``finish`` for the outcome (which may defer again)."""

    delay: float
    finish: Callable[[], Outcome | Deferred]


async def finish_later(deferred: Deferred) -> Outcome:
    """Sleep out ``deferred`` (and any delay it leads to), then its outcome: the one way the
    socket server and the in-process transport finish a late answer."""
    outcome: Outcome | Deferred = deferred
    while isinstance(outcome, Deferred):
        if outcome.delay > 0:
            await asyncio.sleep(outcome.delay)
        outcome = outcome.finish()
    return outcome


def reply_headers(reply: Reply) -> list[tuple[str, str]]:
    """The headers every answer carries, then the reply's own: for both ways of serving."""
    return [
        ("content-type", JSON_CONTENT_TYPE),
        ("x-acs-request-id", reply.request_id),
        *reply.headers,
    ]


class Service:
    """The four operations behind the service's checks, quota and injected faults."""

    def __init__(
        self,
        config: EmulatorConfig,
        keys: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        main_key_id: str | None = None,
    ) -> None:
        self.config = config
        self.library = Library(config.max_faces_per_person)
        self.nonces = NonceCache(config.nonce_ttl, config.max_nonces)
        self._verifier = Verifier(keys, tolerance=config.timestamp_tolerance, nonces=self.nonces)
        self._quota = Quota(
            None if config.qps is None else int(config.qps),
            {action: int(qps) for action, qps in config.action_qps.items()},
        )
        self._rival: Rival | None = None
        if config.rival_qps > 0 and config.rival_client == "arrivals":
            self._rival = Rival(
                config.rival_qps, config.rival_start, config.rival_duration, config.rival_bursty
            )
        rival_key = config.rival_key or main_key_id or ""
        self._rival_account = config.accounts.get(rival_key, rival_key)
        # The process rival's calls (``config.rival_client`` "plain" or "official"), told
        # apart by their User-Agent.
        self._process_rival = [0, 0]  # accepted, throttled
        self.on_first_arrival: Callable[[], None] | None = None
        """Called once, at the first request that is not the rival's (the rival's origin)."""
        self._stats = StatsRecorder()
        self._clock = clock
        self._wall_clock = wall_clock
        # Separate streams, so turning latency on does not change which calls fail.
        seed = config.seed
        self._fault_rng = random.Random(None if seed is None else f"{seed}:faults")
        self._latency_rng = random.Random(None if seed is None else f"{seed}:latency")
        self._face_rng = random.Random(None if seed is None else f"{seed}:faces")
        self._network_rng = random.Random(None if seed is None else f"{seed}:network")
        self._late_rng = random.Random(None if seed is None else f"{seed}:late")
        self._malformed_rng = random.Random(None if seed is None else f"{seed}:malformed")
        self._host_id = config.host

    # --- statistics ----------------------------------------------------------------------------

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters."""
        rival = self._rival
        return attrs.evolve(
            self._stats.snapshot(self.library.face_count),
            max_window_quota=self._quota.peak,
            rival_accepted=(rival.accepted if rival else 0) + self._process_rival[0],
            rival_throttled=(rival.throttled if rival else 0) + self._process_rival[1],
        )

    def reset_stats(self) -> None:
        """Zero the counters (the library, quota windows and nonces stay)."""
        self._stats.reset()
        self._quota.reset_peaks()
        if self._rival is not None:
            self._rival.accepted = self._rival.throttled = 0
        self._process_rival = [0, 0]

    # --- one request ---------------------------------------------------------------------------

    def handle(self, request: Request) -> Outcome | Deferred:
        """Check ``request`` and answer it, now or after the emulated network and latency.

        With a network model the request first travels ``network_delay`` + jitter, and only
        then reaches the checks and the quota gate; its answer travels back likewise.
        """
        inbound, outbound = self._draw_network()
        if inbound > 0:
            return Deferred(inbound, functools.partial(self._arrive, request, outbound))
        return self._arrive(request, outbound)

    def _arrive(self, request: Request, outbound: float) -> Outcome | Deferred:
        now = self._clock()
        stats = self._stats
        stats.arrived(now)
        request_id = str(uuid.uuid4()).upper()
        host_id = self._host_id
        throttled: Reply | None = None
        try:
            signed = self._parse(request)
            host_id = signed.header("host") or host_id
            claimed = signed.header("x-acs-action") or signed.query.get("Action") or "(none)"
            # Counted before the signature check (rejected calls count too), so unknown names
            # share one bucket: a client sending random actions cannot grow the table.
            stats.by_action[claimed if claimed in ACTIONS else "(other)"] += 1
            identity = self._verifier.verify(signed, wall_time=self._wall_clock(), now=now)
            stats.signature_versions[identity.signature_version] += 1
            action = identity.action
            if not action:
                raise errors.missing_parameter("Action")
            if action not in ACTIONS:
                raise errors.UNKNOWN_ACTION
            if not identity.version:
                raise errors.missing_parameter("Version")
            if identity.version != API_VERSION:
                raise errors.BAD_VERSION
            is_rival = RIVAL_AGENT in (signed.header("user-agent") or "")
            if not is_rival and self.on_first_arrival is not None:
                hook, self.on_first_arrival = self.on_first_arrival, None
                hook()
            throttled = self._gate(
                identity.access_key_id, action, now, request_id, host_id, from_rival=is_rival
            )
            if throttled is None and not is_rival:
                stats.admitted(now)
            if throttled is None:
                params = {**signed.form, **signed.query}
                validate(action, params)
        except errors.ServiceError as exc:
            stats.rejected += 1
            return _after(outbound, self.error_reply(exc, request_id, host_id))
        if throttled is not None:
            return _after(outbound, throttled)
        late = self._late_commit(action, params, request_id, host_id)
        if late is not None:
            return attrs.evolve(late, delay=late.delay + outbound)  # and the way back
        fault = self._draw_fault(action)
        delay = self._draw_latency(action) + outbound
        if fault is None and delay == 0:
            return self._run(action, params, request_id, host_id)
        finish = functools.partial(self._finish, action, params, request_id, host_id, fault)
        return Deferred(delay, finish)

    def _gate(
        self,
        key_id: str,
        action: str,
        now: float,
        request_id: str,
        host_id: str,
        *,
        from_rival: bool = False,
    ) -> Reply | None:
        """The quota of (account, action) at arrival time ``now``: None, or the throttle.

        A call of the process rival (``from_rival``) is counted in the rival's figures only."""
        account = self.config.accounts.get(key_id, key_id)
        rival = self._rival
        if rival is not None:
            for at in rival.due(now):
                if self._quota.admit(self._rival_account, self.config.rival_action, at):
                    rival.accepted += 1
                else:
                    rival.throttled += 1
        if self._quota.admit(account, action, now):
            if from_rival:
                self._process_rival[0] += 1
            return None
        if from_rival:
            self._process_rival[1] += 1
        else:
            self._stats.throttled += 1
        headers: tuple[tuple[str, str], ...] = ()
        if self.config.retry_after:
            wait = self._quota.retry_after(account, action, now)
            headers = (("x-acs-retry-after", str(retry_after_ms(wait))),)
        reply = self.error_reply(errors.THROTTLED, request_id, host_id)
        return attrs.evolve(reply, headers=headers)

    def error_reply(
        self, error: errors.ServiceError, request_id: str | None = None, host_id: str | None = None
    ) -> Reply:
        """The service's JSON error body for ``error`` (and count it)."""
        self._stats.errors[error.code] += 1
        request_id = request_id or str(uuid.uuid4()).upper()
        body = {
            "RequestId": request_id,
            "HostId": host_id or self._host_id,
            "Code": error.code,
            "Message": error.message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={error.code}&product=Mts"
            f"&requestId={request_id}",
        }
        return Reply(error.status, _json(body), request_id)

    def _parse(self, request: Request) -> SignedRequest:
        if request.method not in ("POST", "GET"):
            raise errors.BAD_METHOD
        path, _, raw_query = request.target.partition("?")
        if path != "/":
            raise errors.UNKNOWN_ACTION
        headers: dict[str, tuple[str, ...]] = {}
        for name, value in request.headers:
            headers[name] = (*headers.get(name, ()), value)
        form: dict[str, str] = {}
        content_type = headers.get("content-type", ("",))[0]
        if request.body and content_type.lower().startswith(FORM_CONTENT_TYPE):
            try:
                form = decode_params(request.body.decode())
            except UnicodeDecodeError:
                raise errors.invalid_parameter("body", "is not UTF-8") from None
        return SignedRequest(
            method=request.method,
            path=path,
            query=decode_params(raw_query),
            form=form,
            headers=headers,
            body=request.body,
        )

    def _draw_fault(self, action: str) -> str | None:
        config = self.config
        if not config.any_fault or action not in config.fault_actions:
            return None
        draw = self._fault_rng.random()
        for kind, rate in (
            (kinds.INTERNAL_ERROR, config.internal_error_rate),
            (kinds.UNAVAILABLE, config.unavailable_rate),
            (kinds.DROP, config.drop_rate),
            (kinds.COMMIT_TIMEOUT, config.commit_timeout_rate),
        ):
            if draw < rate:
                return kind
            draw -= rate
        return None

    def _draw_network(self) -> tuple[float, float]:
        """One-way delays (in, out) of one request: ``network_delay`` + uniform jitter each."""
        config = self.config
        if config.network_delay == 0 and config.network_jitter == 0:
            return 0.0, 0.0
        rng, jitter = self._network_rng, config.network_jitter
        inbound = config.network_delay + (rng.uniform(0, jitter) if jitter else 0.0)
        outbound = config.network_delay + (rng.uniform(0, jitter) if jitter else 0.0)
        return inbound, outbound

    def _late_commit(
        self, action: str, params: dict[str, str], request_id: str, host_id: str
    ) -> Deferred | None:
        """A late commit: the work is done ``late_commit_delay`` s after arrival, then answered.

        The commit has its own timer, so it happens even when the client has gone (or the
        server drops the pending answer): a lost answer, a face that appears later.
        """
        config = self.config
        if action != REGISTER_CUSTOM_FACE or not config.late_commit_rate:
            return None
        if self._late_rng.random() >= config.late_commit_rate:
            return None
        self._stats.faults[kinds.LATE_COMMIT] += 1
        done: list[Reply] = []

        def commit() -> Reply:
            if not done:
                done.append(self._run(action, params, request_id, host_id))
            return done[0]

        asyncio.get_running_loop().call_later(config.late_commit_delay, commit)
        return Deferred(config.late_commit_delay, commit)

    def _malformed(self, reply: Reply) -> Reply:
        """A damaged ListCustomPersons answer, drawn at ``malformed_listing_rate``."""
        if self._malformed_rng.random() >= self.config.malformed_listing_rate:
            return reply
        self._stats.faults[kinds.MALFORMED_LISTING] += 1
        body = json.loads(reply.body)
        kind = self._malformed_rng.randrange(3)
        faces = [
            face
            for category in body["Categories"]["Category"]
            for person in category["Persons"]["Person"]
            for face in person["Faces"]["Face"]
        ]
        if kind == 0 or not faces:
            del body["Categories"]
        else:
            del faces[0]["FaceId" if kind == 1 else "ImageUrl"]
        return attrs.evolve(reply, body=_json(body))

    def _draw_latency(self, action: str) -> float:
        config = self.config
        if config.latency_actions is not None and action not in config.latency_actions:
            return 0.0
        jitter = self._latency_rng.uniform(0, config.jitter) if config.jitter else 0.0
        return config.latency + jitter

    def _finish(
        self, action: str, params: dict[str, str], request_id: str, host_id: str, fault: str | None
    ) -> Outcome | Deferred:
        if fault is None:
            return self._run(action, params, request_id, host_id)
        self._stats.faults[fault] += 1
        if fault == kinds.INTERNAL_ERROR:
            return self.error_reply(errors.INTERNAL_ERROR, request_id, host_id)
        if fault == kinds.UNAVAILABLE:
            return self.error_reply(errors.UNAVAILABLE, request_id, host_id)
        if fault == kinds.DROP:
            return Drop()
        # Commit, then time out: the work is done and the answer never comes.
        self._run(action, params, request_id, host_id)
        return Hang(self.config.hang)

    def _run(self, action: str, params: dict[str, str], request_id: str, host_id: str) -> Reply:
        try:
            result = execute(action, params, self.library, self._new_face_id)
        except errors.ServiceError as exc:
            self._stats.rejected += 1
            return self.error_reply(exc, request_id, host_id)
        reply = Reply(200, _json({"RequestId": request_id, **result}), request_id)
        if action == LIST_CUSTOM_PERSONS and self.config.malformed_listing_rate:
            return self._malformed(reply)
        return reply

    def _new_face_id(self) -> str:
        return f"{self._face_rng.getrandbits(128):032x}"


def _after(delay: float, outcome: Outcome) -> Outcome | Deferred:
    """``outcome``, sent back over a network that takes ``delay`` seconds."""
    if delay <= 0:
        return outcome
    return Deferred(delay, lambda: outcome)


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
