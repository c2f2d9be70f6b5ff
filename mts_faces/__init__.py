"""Asyncio client, bulk registrar and local emulator for MTS custom-face registration."""

import logging

from ._client import CUSTOM_FACE_REGIONS, MtsFaceClient, endpoint_for_region
from ._credentials import AlibabaCloudCredentials, Credentials, CredentialsProvider
from ._exceptions import (
    AmbiguousOutcomeError,
    APIError,
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    InvalidParameterError,
    MissingExtraError,
    MtsFacesError,
    NotFoundError,
    RateLimiterError,
    RequestTimeoutError,
    ResponseFormatError,
    ResponseTooLargeError,
    ServerError,
    ThrottlingError,
    TransportError,
    ValidationError,
)
from ._limiter import Grant, Limiter, Priority, QuotaLimiter, WindowLimiter
from ._models import (
    Acknowledgement,
    Category,
    CustomPersons,
    Face,
    Person,
    RegisteredFace,
)
from ._operations import MAX_FACES_PER_PERSON, MAX_ID_LENGTH
from ._redis_limiter import RedisWindowLimiter
from ._retry import RetryPolicy
from ._telemetry import AttemptEvent, ClientStats
from ._window import AimdPolicy, MarginPolicy

__version__ = "0.1.0"

# A library logs, the application decides where to: nothing reaches stderr unless configured.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "CUSTOM_FACE_REGIONS",
    "MAX_FACES_PER_PERSON",
    "MAX_ID_LENGTH",
    "APIError",
    "Acknowledgement",
    "AimdPolicy",
    "AlibabaCloudCredentials",
    "AmbiguousOutcomeError",
    "AttemptEvent",
    "AuthenticationError",
    "Category",
    "ClientStats",
    "ConfigurationError",
    "Credentials",
    "CredentialsError",
    "CredentialsProvider",
    "CustomPersons",
    "Face",
    "Grant",
    "InvalidParameterError",
    "Limiter",
    "MarginPolicy",
    "MissingExtraError",
    "MtsFaceClient",
    "MtsFacesError",
    "NotFoundError",
    "Person",
    "Priority",
    "QuotaLimiter",
    "RateLimiterError",
    "RedisWindowLimiter",
    "RegisteredFace",
    "RequestTimeoutError",
    "ResponseFormatError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerError",
    "ThrottlingError",
    "TransportError",
    "ValidationError",
    "WindowLimiter",
    "__version__",
    "endpoint_for_region",
]
