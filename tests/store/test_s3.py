"""The S3 backend's configuration, error classification and failure behaviour against MinIO."""

from __future__ import annotations

import time
from typing import Any

import pytest
import urllib3.exceptions
from minio.error import S3Error, ServerError

from atoll.store import StoreAuthError, StoreError, StoreUnavailableError, open_store
from atoll.store.retry import Retrier, RetryPolicy, classify
from atoll.store.s3 import S3Store, parse_endpoint
from tests.env.minio import MinioServer


@pytest.mark.parametrize(
    ("raw", "secure_flag", "expected"),
    [
        ("127.0.0.1:9000", "", ("127.0.0.1:9000", False)),
        ("minio.local:9000", "true", ("minio.local:9000", True)),
        ("http://minio:9000", "true", ("minio:9000", False)),  # an explicit scheme wins
        ("https://minio:9000/", "", ("minio:9000", True)),
        ("s3.example.com", "0", ("s3.example.com", False)),
    ],
)
def test_endpoint_forms(raw: str, secure_flag: str, expected: tuple[str, bool]) -> None:
    assert parse_endpoint(raw, secure_flag) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MINIO_ENDPOINT"),
        ({"MINIO_ENDPOINT": "ftp://x:1", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}, "MINIO_ENDPOINT"),
        ({"MINIO_ENDPOINT": "x:1/path", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}, "no path"),
        ({"MINIO_ENDPOINT": "x:1", "MINIO_SECURE": "maybe", "MINIO_ACCESS_KEY": "a"}, "MINIO_SECURE"),
        ({"MINIO_ENDPOINT": "x:1"}, "MINIO_ACCESS_KEY and MINIO_SECRET_KEY"),
        ({"MINIO_ENDPOINT": "x:1", "MINIO_ACCESS_KEY": "a"}, "MINIO_SECRET_KEY"),
    ],
)
def test_bad_configuration_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        S3Store.from_uri("s3://bucket/runs", env=env)


def test_bad_uris() -> None:
    env = {"MINIO_ENDPOINT": "x:1", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}
    with pytest.raises(StoreError, match="invalid bucket name"):
        S3Store.from_uri("s3://Bad_Bucket/runs", env=env)
    with pytest.raises(StoreError, match="expected s3://bucket/prefix"):
        S3Store.from_uri("s3:///runs", env=env)
    store = S3Store.from_uri("s3://atoll/runs/demo/", env=env)
    assert (store.bucket, store.prefix, store.uri) == ("atoll", "runs/demo", "s3://atoll/runs/demo")


def s3_error(code: str, status: int) -> S3Error:
    response: Any = urllib3.HTTPResponse(status=status)
    return S3Error(response, code, "msg", "/b/k", "req", "host")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (s3_error("SignatureDoesNotMatch", 403), "auth"),
        (s3_error("InvalidAccessKeyId", 403), "auth"),
        (s3_error("AccessDenied", 403), "auth"),
        (s3_error("SlowDown", 503), "transient"),
        (s3_error("InternalError", 500), "transient"),
        (s3_error("RequestTimeout", 400), "transient"),
        (s3_error("NoSuchKey", 404), "not-found"),
        (s3_error("InvalidArgument", 400), "fatal"),
        (ServerError("boom", 502), "transient"),
        (
            urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NewConnectionError(None, "refused")),
            "transient",
        ),
        (urllib3.exceptions.ProtocolError("reset"), "transient"),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "slow"), "transient"),
        (ConnectionResetError(104, "reset"), "transient"),
        (urllib3.exceptions.SSLError("certificate verify failed"), "fatal"),
        (ValueError("bug"), "fatal"),
    ],
)
def test_error_classification(error: BaseException, kind: str) -> None:
    assert classify(error) == kind


def test_retries_transient_errors_then_succeeds() -> None:
    failures = [s3_error("SlowDown", 503), urllib3.exceptions.ProtocolError("reset")]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    retrier = Retrier("http://s3:9000", RetryPolicy(deadline_seconds=10, base_seconds=0.01))
    assert retrier.call(flaky, action="reading", uri="s3://b/k") == "ok"
    assert failures == []


def test_auth_errors_are_never_retried() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise s3_error("AccessDenied", 403)

    retrier = Retrier("http://s3:9000", RetryPolicy(deadline_seconds=60))
    with pytest.raises(StoreAuthError, match="MINIO_ACCESS_KEY and MINIO_SECRET_KEY"):
        retrier.call(denied, action="writing", uri="s3://b/k")
    assert calls == [1]


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=4.0)
    samples = [policy.backoff(retry) for retry in range(10) for _ in range(50)]
    assert min(samples) >= 0
    assert max(samples) <= 4.0
    assert max(policy.backoff(0) for _ in range(200)) <= 0.5


@pytest.mark.minio
@pytest.mark.parametrize("wrong", ["secret", "access"])
def test_wrong_credentials_fail_fast_with_a_clear_error(
    minio: MinioServer, minio_bucket: str, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    monkeypatch.setenv("MINIO_ENDPOINT", minio.endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", "nobody" if wrong == "access" else minio.access_key)
    monkeypatch.setenv("MINIO_SECRET_KEY", "not-the-secret" if wrong == "secret" else minio.secret_key)
    monkeypatch.setenv("ATOLL_STORE_RETRY_SECONDS", "120")  # a retry would show as a long wait
    started = time.monotonic()
    store = open_store(f"s3://{minio_bucket}/runs/demo")
    with pytest.raises(StoreAuthError) as refused:
        store.put_bytes("spec.json", b"{}")
    with pytest.raises(StoreAuthError):
        store.get_bytes("spec.json")
    assert time.monotonic() - started < 5
    message = str(refused.value)
    assert minio.endpoint in message
    assert "MINIO_ACCESS_KEY" in message
    assert "MINIO_SECRET_KEY" in message
    assert minio.secret_key not in message


@pytest.mark.minio
def test_unreachable_endpoint_gives_up_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.env.process import free_port

    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {"MINIO_ENDPOINT": endpoint, "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}
    store = S3Store.from_uri("s3://bucket/runs", env=env, policy=RetryPolicy(deadline_seconds=1.5))
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"{endpoint}.*unreachable") as failed:
        store.get_bytes("spec.json")
    assert 0.1 < time.monotonic() - started < 10
    assert "Connection refused" in str(failed.value)


@pytest.mark.minio
def test_missing_bucket_is_created_on_first_write(minio: MinioServer, s3_env: dict[str, str]) -> None:
    import uuid

    bucket = f"new-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}/runs/a")
    assert store.list_objects() == []
    assert not store.exists("spec.json")
    store.put_bytes("spec.json", b"{}")
    client: Any = minio.client()
    assert client.bucket_exists(bucket)
    store.delete("spec.json")
    client.remove_bucket(bucket)


@pytest.mark.minio
def test_short_deadline_view_for_heartbeats() -> None:
    from tests.env.process import free_port

    env = {"MINIO_ENDPOINT": f"127.0.0.1:{free_port()}", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}
    store = S3Store.from_uri("s3://bucket/runs", env=env, policy=RetryPolicy(deadline_seconds=600))
    heartbeat_store = store.with_retry_deadline(0.5)
    assert (heartbeat_store.uri, store.policy.deadline_seconds) == (store.uri, 600)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        heartbeat_store.put_bytes("experts/0/progress.json", b"{}")
    assert time.monotonic() - started < 5
