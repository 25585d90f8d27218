"""Asks an island's API server what its credentials may do (SelfSubjectAccessReviews).

`atoll island add` runs this before it creates anything at home. Only the API server of
the island is touched, and only with reviews (nothing is created there either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atoll.errors import AtollError
from atoll.operator.islands.access import Request, beyond_needs, needed

REQUEST_TIMEOUT_SECONDS = 15.0


class IslandUnreachableError(AtollError):
    """The island's API server could not be asked (down, wrong address, refused credentials)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessReport:
    """What the credentials may and may not do on the island."""

    missing: tuple[Request, ...]
    """Needed by the operator, refused: the island cannot be used."""
    broader: tuple[Request, ...]
    """Not needed, allowed: the credentials have more rights than least privilege gives."""


def allowed(api_client: Any, request: Request) -> bool:
    """One SelfSubjectAccessReview: may these credentials do `request`?"""
    from kubernetes import client

    attributes: dict[str, str] = {"verb": request.verb, "resource": request.resource, "group": request.group}
    if request.namespace:
        attributes["namespace"] = request.namespace
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}}  # fmt: skip
    api: Any = client.AuthorizationV1Api(api_client)  # a dict body
    review = api.create_self_subject_access_review(body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    return bool(review.status and review.status.allowed)


def check_access(api_client: Any, namespace: str, *, server: str) -> AccessReport:
    """Review every request the operator needs in `namespace`, and a few it must not need.

    Raises IslandUnreachableError when the server cannot be asked (the reason, never a credential).
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        missing = tuple(request for request in needed(namespace) if not allowed(api_client, request))
        broader = tuple(request for request in beyond_needs(namespace) if allowed(api_client, request))
    except ApiException as error:
        reason = {401: "the credentials were refused (401 Unauthorized)"}.get(
            error.status, f"the API server answered {error.status} {error.reason}"
        )
        raise IslandUnreachableError(f"cannot check access on the island at {server}: {reason}") from None
    except (HTTPError, OSError) as error:
        raise IslandUnreachableError(
            f"cannot reach the island's API server at {server}: {type(error).__name__}"
        ) from None
    return AccessReport(missing=missing, broader=broader)
