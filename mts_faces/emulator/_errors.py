"""The service's error answers: code, HTTP status and message, in the service's words.

Codes the emulator adds where the service publishes none (404s for unknown libraries,
persons and faces; the 10-face cap) follow the service's ``Category.Detail`` naming.
"""

from __future__ import annotations

import attrs

FACE_LIMIT_EXCEEDED = "InvalidParameter.FaceLimitExceeded"


@attrs.frozen
class ServiceError(Exception):
    """An error answer: ``Code`` and ``Message`` of the JSON body, with its HTTP status."""

    status: int
    code: str
    message: str


def missing_parameter(name: str) -> ServiceError:
    """A required parameter (or signing header) is absent or empty."""
    return ServiceError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied.",
    )


def invalid_parameter(name: str, why: str) -> ServiceError:
    """A parameter is present but not acceptable."""
    return ServiceError(400, "InvalidParameter", f'The specified parameter "{name}" {why}.')


def face_limit_exceeded(limit: int) -> ServiceError:
    """The person already has the most faces a person may have."""
    return ServiceError(
        400,
        FACE_LIMIT_EXCEEDED,
        f"The person already has {limit} faces, the most a custom person may have; "
        "unregister a face first.",
    )


def not_found(what: str, value: str) -> ServiceError:
    """A library, person or face named by the call does not exist."""
    return ServiceError(
        404, f"Invalid{what}.NotFound", f'The specified {what} "{value}" does not exist.'
    )


UNKNOWN_KEY = ServiceError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
TIMESTAMP_EXPIRED = ServiceError(
    400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
)
TIMESTAMP_FORMAT = ServiceError(
    400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
)
NONCE_USED = ServiceError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
THROTTLED = ServiceError(400, "Throttling.User", "Request was denied due to user flow control.")
UNKNOWN_ACTION = ServiceError(
    404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method."
)
BAD_VERSION = ServiceError(400, "InvalidVersion", "Specified parameter Version is not valid.")
INTERNAL_ERROR = ServiceError(
    500,
    "InternalError",
    "The request processing has failed due to some unknown error, exception or failure.",
)
UNAVAILABLE = ServiceError(
    503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server."
)
BAD_METHOD = ServiceError(
    405, "UnsupportedHTTPMethod", "This http method is not supported; use POST or GET."
)
TOO_LARGE = ServiceError(413, "InvalidParameter.BodyTooLarge", "The request body is too large.")


def signature_mismatch(string_to_sign: str) -> ServiceError:
    """The signature differs from ours; like the service, echo what we signed."""
    return ServiceError(
        400,
        "SignatureDoesNotMatch",
        "Specified signature is not matched with our calculation. "
        f"server string to sign is:{string_to_sign}",
    )


def incomplete_signature(why: str) -> ServiceError:
    """The Authorization header is malformed or leaves out what must be signed."""
    return ServiceError(
        400,
        "IncompleteSignature",
        f"The request signature does not conform to Aliyun standards: {why}.",
    )
