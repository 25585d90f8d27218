"""Retries of S3 calls: exponential backoff with full jitter on transient failures, bounded by
a total deadline; authentication and permission errors fail at once (no retry storm).

Every failure of the minio client is classified into one of the store's errors: transient
ones are retried, the rest become StoreAuthError, NotFoundError or StoreError immediately.
"""

from __future__ import annotations

import http.client
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import urllib3.exceptions
from minio.error import InvalidResponseError, S3Error, ServerError

from atoll.log import get_logger
from atoll.store.base import NotFoundError, StoreAuthError, StoreError, StoreUnavailableError

log = get_logger(__name__)

T = TypeVar("T")

Kind = Literal["transient", "auth", "not-found", "fatal"]

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "XMinioInvalidIAMCredentials",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "SlowDownRead",
        "SlowDownWrite",
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload"})

DEADLINE_VARIABLE = "ATOLL_STORE_RETRY_SECONDS"
DEFAULT_DEADLINE_SECONDS = 180.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a failing store call is retried."""

    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    """Total time one call may spend retrying before StoreUnavailableError."""
    base_seconds: float = 0.2
    """Backoff of the first retry (upper bound of its jitter)."""
    cap_seconds: float = 5.0
    """Largest backoff between two tries."""

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with the deadline from ATOLL_STORE_RETRY_SECONDS if set."""
        raw = os.environ.get(DEADLINE_VARIABLE)
        if raw is None:
            return cls()
        try:
            deadline = float(raw)
        except ValueError:
            raise StoreError(f"{DEADLINE_VARIABLE}={raw!r} is not a number of seconds") from None
        if deadline < 0:
            raise StoreError(f"{DEADLINE_VARIABLE}={raw!r} must be >= 0")
        return cls(deadline_seconds=deadline)

    def backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base·2^retry)]."""
        return random.uniform(0.0, min(self.cap_seconds, self.base_seconds * 2.0**retry))  # noqa: S311


def classify(error: BaseException) -> Kind:  # noqa: PLR0911 (one return per failure family)
    """What kind of failure a minio/urllib3 exception is."""
    if isinstance(error, S3Error):
        code = error.code or ""
        status = error.response.status if error.response is not None else 0
        if code in AUTH_CODES:
            return "auth"
        if code in NOT_FOUND_CODES:
            return "not-found"
        if code in TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return "transient"
        return "fatal"
    if isinstance(error, ServerError):
        return "transient" if error.status_code >= 500 or error.status_code in (408, 429) else "fatal"
    if isinstance(error, InvalidResponseError):
        # A proxy or a starting server answering with a non-XML body.
        status = int(getattr(error, "_code", 0) or 0)
        if status in (401, 403):
            return "auth"
        return "transient" if status >= 500 or status in (408, 429) else "fatal"
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        return classify(error.reason) if error.reason is not None else "transient"
    if isinstance(error, urllib3.exceptions.SSLError | urllib3.exceptions.LocationParseError):
        return "fatal"  # a TLS or endpoint misconfiguration: retrying will not fix it
    if isinstance(error, urllib3.exceptions.HTTPError | http.client.HTTPException | ConnectionError | TimeoutError):
        return "transient"
    if isinstance(error, OSError) and error.errno is not None:
        return "transient"  # e.g. ECONNRESET surfacing as a plain OSError
    return "fatal"


def describe(error: BaseException) -> str:
    """A one-line description of a minio/urllib3 failure."""
    if isinstance(error, S3Error):
        return f"{error.code}: {error.message}"
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        return describe(error.reason)
    text = str(error).strip() or type(error).__name__
    return text.split("\n", 1)[0]


class Retrier:
    """Runs store calls against one endpoint under a RetryPolicy."""

    def __init__(self, endpoint: str, policy: RetryPolicy) -> None:
        self.endpoint = endpoint
        self.policy = policy

    def call(self, operation: Callable[[], T], *, action: str, uri: str) -> T:
        """Run `operation` (e.g. action "writing" of `uri`), retrying transient failures until
        the policy's deadline; NotFoundError(uri) for a missing key or bucket."""
        what = f"{action} {uri}"
        started = time.monotonic()
        retry = 0
        while True:
            try:
                return operation()
            except StoreError:
                raise
            except Exception as error:
                kind = classify(error)
                if kind == "auth":
                    raise StoreAuthError(
                        f"the S3 store at {self.endpoint} refused {what} ({describe(error)}): check "
                        "MINIO_ACCESS_KEY and MINIO_SECRET_KEY (in a pod: the Secret named by "
                        "spec.storage.secretRef) and the user's policy on the bucket"
                    ) from error
                if kind == "not-found":
                    raise NotFoundError(uri) from error
                if kind == "fatal":
                    raise StoreError(f"{what} failed at {self.endpoint}: {describe(error)}") from error
                elapsed = time.monotonic() - started
                delay = self.policy.backoff(retry)
                if elapsed + delay > self.policy.deadline_seconds:
                    raise StoreUnavailableError(
                        f"the S3 store at {self.endpoint} stayed unreachable for {elapsed:.0f} s "
                        f"({retry + 1} tries) during {what}: {describe(error)}; check MINIO_ENDPOINT "
                        f"and that the server is up ({DEADLINE_VARIABLE} sets how long to retry)"
                    ) from error
                if retry == 0 or retry % 5 == 0:
                    log.warning(
                        "store call failed, retrying",
                        endpoint=self.endpoint,
                        what=what,
                        error=describe(error),
                        tries=retry + 1,
                        elapsed_s=round(elapsed, 1),
                    )
                time.sleep(delay)
                retry += 1
