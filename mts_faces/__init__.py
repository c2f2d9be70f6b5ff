"""Asyncio client, bulk registrar and local emulator for MTS custom-face registration."""

from ._client import CUSTOM_FACE_REGIONS, MtsFaceClient, endpoint_for_region
from ._credentials import Credentials
from ._exceptions import (
    AmbiguousOutcomeError,
    APIError,
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    InvalidParameterError,
    MtsFacesError,
    NotFoundError,
    RateLimiterError,
    ResponseFormatError,
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
from ._window import AimdPolicy, MarginPolicy

__version__ = "0.1.0"

__all__ = [
    "CUSTOM_FACE_REGIONS",
    "MAX_FACES_PER_PERSON",
    "MAX_ID_LENGTH",
    "APIError",
    "Acknowledgement",
    "AimdPolicy",
    "AmbiguousOutcomeError",
    "AuthenticationError",
    "Category",
    "ConfigurationError",
    "Credentials",
    "CredentialsError",
    "CustomPersons",
    "Face",
    "Grant",
    "InvalidParameterError",
    "Limiter",
    "MarginPolicy",
    "MtsFaceClient",
    "MtsFacesError",
    "NotFoundError",
    "Person",
    "Priority",
    "QuotaLimiter",
    "RateLimiterError",
    "RedisWindowLimiter",
    "RegisteredFace",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "ThrottlingError",
    "TransportError",
    "ValidationError",
    "WindowLimiter",
    "__version__",
    "endpoint_for_region",
]
