"""The few Kubernetes API calls the reconciler makes, through the official client.

Creates are create-if-absent (AlreadyExists is success: names are deterministic), deletes
ignore NotFound, and Secrets are read but never logged. The client is configured once, in
cluster from the service account or out of cluster from KUBECONFIG.
"""

from __future__ import annotations

from typing import Any

from atoll.api.spec import API_GROUP, API_VERSION
from atoll.log import get_logger
from atoll.operator import api_json
from atoll.operator.crd import EXPERT, RUN
from atoll.operator.views import LABEL_RUN

log = get_logger(__name__)


def load_config(kubeconfig: str | None = None) -> Any:
    """A configured `kubernetes.client.ApiClient`: in cluster when possible, else the kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # untyped module
    configuration = client.Configuration()
    try:
        if kubeconfig:
            raise config.ConfigException("a kubeconfig was given")
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTIONS
    return client.ApiClient(configuration)


CONNECTIONS = 48
"""Kept-alive connections to the API server: one per thread that calls it at once (16 pod and
DDMExpert creators, 16 status writers, the reconcile threads' reads). Beyond the pool, every
request opens a new TLS connection and closes it after (urllib3 discards what the pool cannot
keep): a handshake per request, for the operator and for the API server."""


def connection_info(configuration: Any) -> Any:
    """kopf's login for the same cluster and credentials as the client (`kopf.ConnectionInfo`)."""
    import kopf

    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Kube:
    """Thin, typed-enough wrapper over CoreV1Api and CustomObjectsApi."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.configuration: Any = api_client.configuration
        # Typed as Any: bodies go in and out as plain dicts (the API server's JSON).
        self.core: Any = client.CoreV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)

    @staticmethod
    def _status(error: Exception) -> int:
        return int(getattr(error, "status", 0) or 0)

    def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Create a pod; False if it already exists."""
        from kubernetes.client.exceptions import ApiException

        try:
            # The created pod is not needed: not decoding it into the client's models saves the
            # operator milliseconds of CPU per pod (thousands of pods at scale).
            _drain(self.core.create_namespaced_pod(manifest["metadata"]["namespace"], manifest, _preload_content=False))
        except ApiException as error:
            if self._status(error) == 409:
                return False
            raise
        return True

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod's body, or None if it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.core.read_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as error:
            if self._status(error) == 404:
                return None
            raise
        return _json(response)

    def delete_pod(self, namespace: str, name: str, *, grace_seconds: int | None = None) -> None:
        """Delete a pod (NotFound is fine)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        options = client.V1DeleteOptions(grace_period_seconds=grace_seconds, propagation_policy="Background")
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options)
        except ApiException as error:
            if self._status(error) != 404:
                raise

    def run_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        """Every pod of a run, straight from the API server (not a cache)."""
        response = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_RUN}={run}", _preload_content=False)
        items: list[dict[str, Any]] = _json(response).get("items", [])
        return items

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret's body or None. The caller must never log or publish its data."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if self._status(error) == 404:
                return None
            raise
        return _json(response)

    def create_expert(self, manifest: dict[str, Any]) -> bool:
        """Create a DDMExpert; False if it already exists."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            _drain(
                self.custom.create_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, EXPERT.plural, manifest, _preload_content=False
                )
            )
        except ApiException as error:
            if self._status(error) == 409:
                return False
            raise
        log.info("expert created", expert=name, namespace=namespace)
        return True

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace the fields of a DDMRun's status (merge patch on the status subresource)."""
        body = {"status": status}
        _drain(
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, RUN.plural, name, body, _preload_content=False
            )
        )

    def patch_expert_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace the fields of a DDMExpert's status (merge patch on the status subresource)."""
        body = {"status": status}
        _drain(
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, EXPERT.plural, name, body, _preload_content=False
            )
        )


def _drain(response: Any) -> None:
    """Read an undecoded response to its end, so its connection goes back to the pool."""
    response.data  # noqa: B018 - reading the property consumes the body and releases the connection


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = api_json.loads(response.data)
    return data
