"""The blocking side: list and watch one service's EndpointSlices with the official client.

Everything here runs in the resolver's worker thread. The ``kubernetes`` package is imported
inside the functions, so that ``import gz`` (and even building a k8s resolver) never
loads it; it is loaded by the first worker thread that needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .slices import Json
from .sockets import Sockets, Stopped
from .target import KubeTarget

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# The API server ends a watch after timeoutSeconds; drawn per watch from this range (under five
# minutes, as the server's own request timeout would cut longer ones) so that many clients
# started together do not all reconnect together.
WATCH_SECONDS = (200, 280)
CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 30.0
# A watch read that waits this much longer than timeoutSeconds means a dead connection.
WATCH_READ_SLACK = 30.0

ROLE_HINT = "`gz kube endpoints` writes that Role and RoleBinding (docs/discovery/kubernetes.md)"


class Expired(Exception):
    """410 Gone: the resourceVersion we hold is older than the server keeps; list again."""


class StreamCut(Exception):
    """An open watch broke off (connection dropped, or silent past its read timeout)."""


class WatchEnded(Exception):
    """The server ended a watch with an ERROR event other than 410."""


def in_cluster() -> bool:
    """True in a pod: the kubelet sets these for every container."""
    return all(
        os.environ.get(name) for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
    )


def connect() -> ApiClient:
    """A client configured in-cluster (service account token and CA) in a pod, else from
    KUBECONFIG or ~/.kube/config. Its own Configuration: the global default is left alone."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if in_cluster():
        config.load_incluster_config(client_configuration=configuration)
    else:
        # The path is read now: the client reads KUBECONFIG once, when it is first imported.
        config.load_kube_config(
            _kubeconfig_paths(), client_configuration=configuration, persist_config=False
        )
    configuration.keep_alive = True  # TCP keepalive notices a dead peer on a quiet watch
    configuration.retries = 1  # one quick retry for a stale pooled connection; we back off
    return client.ApiClient(configuration)


class SliceApi:
    """List and watch calls for one service; ``interrupt()`` (from any thread) ends the call in
    progress, whatever it waits for, and every later one, so the worker thread can finish."""

    def __init__(self, api_client: ApiClient, target: KubeTarget) -> None:
        from kubernetes import client

        self.target = target
        self.host = api_client.configuration.host
        self._api_client = api_client
        self._api = client.DiscoveryV1Api(api_client)
        self._sockets = Sockets()
        self._sockets.track(api_client)  # cuts a call still waiting for its response
        self._lock = threading.Lock()
        self._open: Any = None  # the urllib3 response being read (a list's body, or a watch)
        self._interrupted = False

    def list(self) -> tuple[list[Any], str]:
        """Every item of the service's EndpointSliceList (a slice each, unless the server
        misbehaves) and the list's resourceVersion."""
        response = self._api.list_namespaced_endpoint_slice(
            self.target.namespace,
            label_selector=self.target.label_selector,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT, LIST_READ_TIMEOUT),
        )
        with self._reading(response) as stopped:
            if stopped:
                raise Stopped("the Kubernetes client is stopping")
            data = response.data
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError(f"the EndpointSliceList is not a JSON object: {data[:100]!r}")
        metadata = body.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(version, str) or not version:
            raise ValueError("the EndpointSliceList has no metadata.resourceVersion")
        items = body.get("items") or []
        if not isinstance(items, list):
            raise ValueError(f"the items of the EndpointSliceList are not a list: {items!r:.100}")
        return items, version

    def watch(self, resource_version: str) -> Iterator[Json]:
        """Watch events from resource_version on, until the server ends the watch."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        seconds = random.randint(*WATCH_SECONDS)
        try:
            response = self._api.list_namespaced_endpoint_slice(
                self.target.namespace,
                label_selector=self.target.label_selector,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, seconds + WATCH_READ_SLACK),
            )
        except ApiException as error:
            if error.status == 410:
                raise Expired(status_message(error.body)) from None
            raise
        with self._reading(response) as stopped:
            if stopped:  # stopped while the watch was being opened
                return
            try:
                for line in _lines(response):
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError(f"a watch event that is not a JSON object: {line[:100]!r}")
                    yield event
            except (HTTPError, OSError) as error:
                raise StreamCut(str(error)) from error

    @contextlib.contextmanager
    def _reading(self, response: Any) -> Iterator[bool]:
        """Makes response the one interrupt() cuts while the block reads it, and closes it
        after; the block gets True if interrupt() came first (then it should read nothing)."""
        with self._lock:
            self._open = response
            interrupted = self._interrupted
        try:
            yield interrupted
        finally:
            with self._lock:
                self._open = None
            response.close()

    def interrupt(self) -> None:
        """End the call in progress (the worker then sees it fail or end) and refuse new ones."""
        with self._lock:
            response, self._interrupted = self._open, True
        if response is not None:
            _shut_down(response)
        self._sockets.shut_down()  # a call still waiting for its response, or connecting

    def close(self) -> None:
        self._api_client.close()


def _shut_down(response: Any) -> None:
    with contextlib.suppress(OSError, RuntimeError, ValueError):  # already closed
        response.shutdown()


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON: one watch event per line, however the chunks fall."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def status_message(body: Any) -> str:
    """The message of a Status object (a dict, or the JSON text of an error response)."""
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return str(body)[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or body)
    return str(body)


def explain(error: BaseException, target: KubeTarget, host: str) -> str:
    """What went wrong and what to do, for listener.error (the caller adds the target)."""
    if isinstance(error, ImportError):
        return f"the kubernetes package is missing ({error}); install it: pip install kubernetes"
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    if isinstance(error, ConfigException):
        where = "the pod's service account" if in_cluster() else _kubeconfig_paths()
        return (
            f"no usable Kubernetes configuration in {where}: {error}; "
            "set KUBECONFIG or run in a pod with a service account"
        )
    if isinstance(error, ApiException):
        return _explain_status(error.status, status_message(error.body), target, host)
    if isinstance(error, WatchEnded):
        return f"the API server ended the watch: {error}"
    if isinstance(error, ValueError):
        return f"the API server at {host} sent something unreadable: {error}"
    if not host:  # failed before a client existed
        return f"cannot set up the Kubernetes client: {error}"
    from urllib3.exceptions import HTTPError

    if isinstance(error, HTTPError | OSError):
        cause = getattr(error, "reason", None) or error  # urllib3's MaxRetryError wraps the cause
        return f"cannot reach the Kubernetes API server at {host}: {cause}"
    # Not the network's fault: say what it was rather than send the user checking connectivity.
    return (
        f"reading the EndpointSlices from {host} failed with {type(error).__name__}: {error}; "
        "this is a bug in gz, please report it with this message"
    )


def _explain_status(status: int | None, message: str, target: KubeTarget, host: str) -> str:
    if status == 401:
        return (
            f"the API server at {host} rejected the credentials (401 Unauthorized: {message}); "
            "check the token in the kubeconfig or the pod's service account"
        )
    if status == 403:
        return (
            f"forbidden (403: {message}). The client's identity needs the verbs list and watch on "
            f"endpointslices in API group discovery.k8s.io in namespace {target.namespace!r}; "
            + ROLE_HINT
        )
    if status == 404:
        return (
            f"the API server at {host} does not serve discovery.k8s.io/v1 EndpointSlices "
            f"(404: {message}); Kubernetes 1.21 or newer is needed"
        )
    return f"the API server at {host} answered {status}: {message}"


def _kubeconfig_paths() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
