"""The emulator's settings: one frozen value, checked when built."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from typing import Any

import attrs

REGISTER_CUSTOM_FACE = "RegisterCustomFace"
RIVAL_CLIENTS = ("arrivals", "plain", "official")
"""The ways the emulator makes its rival program (see ``EmulatorConfig.rival_client``)."""
UNREGISTER_CUSTOM_FACE = "UnregisterCustomFace"
LIST_CUSTOM_PERSONS = "ListCustomPersons"
TAG_CUSTOM_PERSON = "TagCustomPerson"
ACTIONS = frozenset(
    {REGISTER_CUSTOM_FACE, UNREGISTER_CUSTOM_FACE, LIST_CUSTOM_PERSONS, TAG_CUSTOM_PERSON}
)

_ALPHANUMERIC = string.ascii_letters + string.digits


@attrs.frozen
class AccessKey:
    """An AccessKey pair the emulator accepts; the secret never appears in a repr."""

    access_key_id: str
    access_key_secret: str = attrs.field(repr=False)

    def __repr__(self) -> str:
        return f"AccessKey(access_key_id={self.access_key_id!r}, access_key_secret='***')"

    @classmethod
    def generate(cls) -> AccessKey:
        """A fresh random pair shaped like Alibaba Cloud's (``LTAI`` + 20, and 30 characters)."""
        key_id = "LTAI" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(20))
        secret = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(30))
        return cls(key_id, secret)


def _rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within 0..1, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _check_qps(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    # The quota counts whole calls: a window must hold at least one.
    if value is not None and value < 1:
        raise ValueError(f"qps must be >= 1 (or None for no quota), got {value}")


def _key_ids(keys: Mapping[str, str]) -> str:
    return repr(sorted(keys))


def _check_action_qps(
    instance: object, attribute: attrs.Attribute[Any], value: Mapping[str, float]
) -> None:
    for action, qps in value.items():
        if action not in ACTIONS:
            raise ValueError(f"action_qps: unknown action {action!r}; known: {sorted(ACTIONS)}")
        if not qps >= 1:
            raise ValueError(f"action_qps[{action!r}] must be >= 1, got {qps}")


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """How the emulator listens, which keys it accepts, its quota and the faults it injects.

    Latency (``latency`` + uniform ``jitter`` seconds) applies to ``latency_actions`` (None:
    every action). The fault rates are probabilities per accepted request of an action in
    ``fault_actions``; together they may not exceed 1.
    """

    host: str = "127.0.0.1"
    port: int = 0
    qps: float | None = attrs.field(default=100.0, validator=_check_qps)
    access_key: AccessKey | None = None
    """The main key pair; None draws a random one (see ``Emulator.key``)."""
    extra_keys: Mapping[str, str] = attrs.field(factory=dict, repr=_key_ids)
    """More accepted pairs, AccessKeyId -> secret; each its own account (see ``accounts``)."""
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    latency_actions: frozenset[str] | None = None
    internal_error_rate: float = attrs.field(default=0.0, validator=_rate)
    """500 InternalError, nothing stored."""
    unavailable_rate: float = attrs.field(default=0.0, validator=_rate)
    """503 ServiceUnavailable, nothing stored."""
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    """The connection is closed without an answer, nothing stored."""
    commit_timeout_rate: float = attrs.field(default=0.0, validator=_rate)
    """The call IS carried out, then the connection hangs ``hang`` seconds and closes."""
    hang: float = attrs.field(default=600.0, validator=_non_negative)
    fault_actions: frozenset[str] = frozenset({REGISTER_CUSTOM_FACE})
    late_commit_rate: float = attrs.field(default=0.0, validator=_rate)
    """Share of accepted RegisterCustomFace calls committed ``late_commit_delay`` seconds
    after they arrive, then answered (a slow backend: beyond the client's timeout the answer
    is lost and the face still appears later, even if the connection is gone)."""
    late_commit_delay: float = attrs.field(default=5.0, validator=_non_negative)
    malformed_listing_rate: float = attrs.field(default=0.0, validator=_rate)
    """Share of ListCustomPersons answered 200 with a damaged body: no ``Categories``, or a
    face without ``FaceId`` or ``ImageUrl``."""
    seed: int | None = None
    """Seeds the fault, jitter and FaceId draws, so a run can be repeated."""
    max_faces_per_person: int = 10
    timestamp_tolerance: float = attrs.field(default=900.0, validator=_non_negative)
    """Seconds a request's timestamp may be off the emulator's clock (the service: 15 min)."""
    nonce_ttl: float = attrs.field(default=900.0, validator=_non_negative)
    """Seconds a SignatureNonce is remembered."""
    max_nonces: int = 1_000_000
    """Bound on remembered nonces: the oldest go first when a burst exceeds it."""
    max_body: int = 1 << 20
    tls: bool = False
    """Serve https; with no ``certfile`` a CA and certificate are made on the spot."""
    certfile: str | None = None
    keyfile: str | None = None
    # --- the quota's scope and the network in front of it -------------------------------------
    action_qps: Mapping[str, float] = attrs.field(factory=dict, validator=_check_action_qps)
    """Per-action quotas overriding ``qps`` (the service counts each API on its own)."""
    accounts: Mapping[str, str] = attrs.field(factory=dict)
    """AccessKeyId -> account name: keys of one account share its quota (a key not listed is
    an account of its own)."""
    network_delay: float = attrs.field(default=0.0, validator=_non_negative)
    """One-way network delay in seconds, each way; on the way in it comes *before* the quota
    gate, so the gate counts arrivals, not sends."""
    network_jitter: float = attrs.field(default=0.0, validator=_non_negative)
    """Plus uniform 0..``network_jitter`` s, drawn per request and per direction (seeded):
    requests sent in one order arrive reordered and bunched."""
    rival_qps: float = attrs.field(default=0.0, validator=_non_negative)
    """Another program spending this many calls/s of ``rival_key``'s account quota."""
    rival_start: float = attrs.field(default=0.0, validator=_non_negative)
    """Seconds after the first request when the rival starts."""
    rival_duration: float | None = None
    """Seconds the rival runs (None: until the emulator stops)."""
    rival_bursty: bool = False
    """Bursty rival: each second's calls all at once; else evenly paced."""
    rival_key: str | None = None
    """AccessKeyId whose account the rival spends (None: the main key's)."""
    rival_action: str = REGISTER_CUSTOM_FACE
    """The action whose quota the rival spends."""
    rival_client: str = "arrivals"
    """How the rival is made: ``"arrivals"``, its calls charged to the quota at their exact
    times with no network (deterministic, for tests); ``"plain"`` or ``"official"``, a real,
    separate client process sending over its own new connection per call (httpx, or
    Alibaba's SDK from the ``bench`` extra), with the emulator's latency and jitter like any
    other client, retrying nothing. A process rival spends the main key's quota and only
    ``RegisterCustomFace``."""
    retry_after: bool = True
    """Send ``x-acs-retry-after`` (milliseconds until the quota frees a slot) when throttling."""

    def __attrs_post_init__(self) -> None:
        if self.rival_action not in ACTIONS:
            raise ValueError(f"rival_action: unknown action {self.rival_action!r}")
        if self.rival_client not in RIVAL_CLIENTS:
            raise ValueError(
                f"rival_client must be one of {', '.join(RIVAL_CLIENTS)}, got {self.rival_client!r}"
            )
        if self.rival_client != "arrivals" and self.rival_qps > 0:
            if self.rival_key is not None or self.rival_action != REGISTER_CUSTOM_FACE:
                raise ValueError("a process rival spends the main key's RegisterCustomFace quota")
            if self.tls:
                raise ValueError("a process rival talks plain HTTP: use it without tls")
        if self.rival_duration is not None and self.rival_duration < 0:
            raise ValueError(f"rival_duration must be >= 0, got {self.rival_duration}")
        faults = self.fault_total
        if faults > 1.0 + 1e-9:
            raise ValueError(f"the fault rates add up to {faults:g}, more than 1")
        unknown = (self.fault_actions | (self.latency_actions or frozenset())) - ACTIONS
        if unknown:
            raise ValueError(f"unknown actions {sorted(unknown)}; known: {sorted(ACTIONS)}")
        if self.max_faces_per_person < 1:
            raise ValueError(f"max_faces_per_person must be >= 1, got {self.max_faces_per_person}")
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile given without certfile")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")

    @property
    def any_fault(self) -> bool:
        """Whether any fault rate is above zero."""
        return self.fault_total > 0

    @property
    def fault_total(self) -> float:
        """The fault rates added up: the share of calls that fail."""
        return (
            self.internal_error_rate
            + self.unavailable_rate
            + self.drop_rate
            + self.commit_timeout_rate
        )
