"""The emulator's own endpoints, beside the service's ``POST /``: ``GET /_emulator/stats``
answers the counters as JSON, for tests and tools in another process."""

from __future__ import annotations

import json
import uuid

from ._service import Reply, Service

STATS_PATH = "/_emulator/stats"
ADMIN_PREFIX = "/_emulator/"


def is_admin(target: str) -> bool:
    """True for a request target (path and query) of the emulator's own endpoints."""
    return target.startswith(ADMIN_PREFIX)


def admin_reply(service: Service, method: str, target: str) -> Reply:
    """The answer of an ``/_emulator/...`` endpoint; these are not counted in the stats."""
    path = target.split("?", 1)[0]
    request_id = uuid.uuid4().hex.upper()
    if path != STATS_PATH:
        return _error(404, "NotFound", f"no emulator endpoint {path}", request_id)
    if method not in ("GET", "HEAD"):
        return _error(405, "MethodNotAllowed", f"{path} answers GET only", request_id)
    body = {"RequestId": request_id, **service.stats.to_dict()}
    return Reply(200, json.dumps(body, sort_keys=True).encode(), request_id)


def _error(status: int, code: str, message: str, request_id: str) -> Reply:
    body = {"RequestId": request_id, "Code": code, "Message": message}
    return Reply(status, json.dumps(body).encode(), request_id)
