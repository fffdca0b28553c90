"""A small Kubernetes API server for tests: EndpointSlices only, but spoken faithfully.

What it serves, as kube-apiserver does:
- ``GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=...``: an
  EndpointSliceList whose metadata.resourceVersion is the global counter at the time of the list;
- the same with ``watch=true|1``: newline-delimited JSON watch events over a chunked response,
  from ``resourceVersion`` on (the current state as ADDED events when it is empty or "0"),
  BOOKMARK events (only metadata.resourceVersion) when ``allowWatchBookmarks`` is set, an ERROR
  event carrying a 410 Expired Status when the version is older than the kept history, and the
  end of the stream after ``timeoutSeconds``;
- Status objects for 401 (no or wrong bearer token), 403 (a forbidden namespace), 404;
- minimal ``/api`` and ``/apis`` discovery documents.

Tests change the state with put_slice / delete_slice, and provoke the hard cases with
compact (forget history), gone_on_next_watch, close_watches, bookmark,
hanging_lists (an overloaded server), put_raw_event and list_extras (malformed objects).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Json = dict[str, Any]

_COLLECTION = re.compile(r"^/apis/discovery\.k8s\.io/v1/namespaces/([^/]+)/endpointslices$")
DEFAULT_WATCH_SECONDS = 1800


def status(code: int, reason: str, message: str, **details: Any) -> Json:
    """A metav1.Status as the API server sends it for a failure."""
    body: Json = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def endpoint_slice(
    name: str,
    service: str,
    addresses: Sequence[str | tuple[str, Json]],
    *,
    port: int | None = 8080,
    port_name: str = "grpc",
    address_type: str = "IPv4",
    ports: list[Json] | None = None,
    zones: Mapping[str, str] | None = None,
    hints: Mapping[str, Sequence[str]] | None = None,
) -> Json:
    """An EndpointSlice of service; an address may come with its conditions: ("10.0.0.1",
    {"serving": False}). Without conditions an endpoint is ready, serving and not terminating.
    ``zones`` gives addresses their zone, ``hints`` the zones they are hinted for (forZones),
    as the EndpointSlice controller writes them."""
    endpoints = []
    for item in addresses:
        address, conditions = item if isinstance(item, tuple) else (item, None)
        if conditions is None:
            conditions = {"ready": True, "serving": True, "terminating": False}
        endpoint: Json = {"addresses": [address], "conditions": conditions}
        if zones and address in zones:
            endpoint["zone"] = zones[address]
        if hints and address in hints:
            endpoint["hints"] = {"forZones": [{"name": zone} for zone in hints[address]]}
        endpoints.append(endpoint)
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports if ports is not None else [
            {"name": port_name, "protocol": "TCP", "port": port}
        ],
    }  # fmt: skip


@dataclass
class _Change:
    version: int
    type: str
    namespace: str
    object: Json
    raw: Any = None  # put_raw_event: sent as is on every watch of the namespace


def _matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, comma-joined."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class KubeApiServer:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self._port = 0  # a free one at the first start(); a start() after stop() reuses it
        self._changed = threading.Condition()
        self._version = 1000  # the global resourceVersion counter (etcd's revision)
        self._objects: dict[tuple[str, str], Json] = {}
        self._history: list[_Change] = []
        self._oldest = 0  # watches from a version below this get 410 Expired
        self._close_generation = 0
        self._abort_generation = 0
        self._bookmark_generation = 0
        self._gone_next_watch: str | None = None
        self._held = False
        self._lists_hang: str | None = None  # hanging_lists: "response" or "body"
        self._open_watches = 0
        self.list_extras: list[Any] = []  # appended to every list's items, malformed or not
        self.forbidden: set[str] = set()
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> KubeApiServer:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server, self._port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (as a crashed API server would)."""
        if self._server is None:
            return
        self.close_watches(abort=True)
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._changed:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig file pointing at this server (JSON is valid YAML)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        return path

    # -- state --------------------------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        with self._changed:
            return str(self._version)

    def put_slice(self, namespace: str, obj: Json) -> Json:
        """Create (ADDED) or replace (MODIFIED) a slice; returns it as stored."""
        with self._changed:
            key = (namespace, obj["metadata"]["name"])
            kind = "MODIFIED" if key in self._objects else "ADDED"
            stored = self._record(kind, namespace, obj)
            self._objects[key] = stored
            return copy.deepcopy(stored)

    def delete_slice(self, namespace: str, name: str) -> None:
        with self._changed:
            obj = self._objects.pop((namespace, name))
            self._record("DELETED", namespace, obj)

    def put_raw_event(self, namespace: str, event: Any) -> None:
        """Send event verbatim on the namespace's watches (however malformed); lists ignore it."""
        with self._changed:
            self._version += 1
            self._history.append(_Change(self._version, "RAW", namespace, {}, raw=event))
            self._changed.notify_all()

    def _record(self, kind: str, namespace: str, obj: Json) -> Json:
        self._version += 1
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        metadata.update(namespace=namespace, resourceVersion=str(self._version))
        metadata.setdefault("uid", f"uid-{namespace}-{metadata['name']}")
        metadata.setdefault("generation", 1)
        self._history.append(_Change(self._version, kind, namespace, stored))
        self._changed.notify_all()
        return stored

    # -- the hard cases -----------------------------------------------------------------------
    @contextlib.contextmanager
    def holding_watches(self) -> Iterator[None]:
        """Open watches send nothing inside the block (changes pile up, as for a slow client)."""
        with self._changed:
            self._held = True
        try:
            yield
        finally:
            with self._changed:
                self._held = False
                self._changed.notify_all()

    @contextlib.contextmanager
    def hanging_lists(self, after_headers: bool = False) -> Iterator[None]:
        """Lists inside the block hang, as an overloaded API server's do: before any response,
        or after the headers and half the body. They are answered in full when the block ends."""
        with self._changed:
            self._lists_hang = "body" if after_headers else "response"
        try:
            yield
        finally:
            with self._changed:
                self._lists_hang = None
                self._changed.notify_all()

    def compact(self) -> None:
        """Forget the history: a watch from any older version now gets 410 Expired, open ones
        too as soon as they would need a forgotten event."""
        with self._changed:
            self._oldest = self._version
            self._history.clear()
            self._changed.notify_all()

    def gone_on_next_watch(self, as_http_status: bool = False) -> None:
        """The next watch request fails with 410: as an ERROR event (what kube-apiserver sends)
        or as an HTTP 410 response."""
        with self._changed:
            self._gone_next_watch = "http" if as_http_status else "event"

    def close_watches(self, abort: bool = False) -> None:
        """End every open watch: cleanly (end of the chunked body), or by cutting the connection."""
        with self._changed:
            if abort:
                self._abort_generation += 1
            else:
                self._close_generation += 1
            self._changed.notify_all()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion on every watch that allows them."""
        with self._changed:
            self._bookmark_generation += 1
            self._changed.notify_all()

    def open_watches(self) -> int:
        with self._changed:
            return self._open_watches

    # -- requests -----------------------------------------------------------------------------
    def _list(self, namespace: str, selector: str) -> Json:
        with self._changed:
            items = [
                _without_type(obj)
                for (ns, _), obj in sorted(self._objects.items())
                if ns == namespace and _matches(selector, obj["metadata"].get("labels", {}))
            ]
            return {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items + copy.deepcopy(self.list_extras),
            }

    def _answer_list(self, handler: _Handler, body: Json) -> None:
        with self._changed:
            hang, abort = self._lists_hang, self._abort_generation
        if hang is None:
            handler.send_json(200, body)
            return
        data = json.dumps(body).encode()
        if hang == "body":
            handler.send_head(200, len(data))
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
        with self._changed:
            while self._lists_hang is not None and abort == self._abort_generation:
                self._changed.wait(0.5)
            if abort != self._abort_generation:
                handler.abort()
                return
        with contextlib.suppress(OSError):  # the client may have given up
            if hang == "body":
                handler.wfile.write(data[len(data) // 2 :])
            else:
                handler.send_json(200, body)

    def _watch(self, handler: _Handler, namespace: str, query: dict[str, str]) -> None:
        selector = query.get("labelSelector", "")
        bookmarks = query.get("allowWatchBookmarks") == "true"
        seconds = int(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        deadline = time.monotonic() + seconds
        requested = query.get("resourceVersion", "")
        with self._changed:
            gone, self._gone_next_watch = self._gone_next_watch, None
            if gone == "http":
                handler.send_json(410, status(410, "Expired", "too old resource version"))
                return
            handler.start_stream()
            self._open_watches += 1
            # taken with the count: a close_watches() once open_watches() says 1 reaches it
            seen = (self._close_generation, self._abort_generation, self._bookmark_generation)
        try:
            self._stream(handler, namespace, selector, bookmarks, deadline, requested, gone, seen)
        except OSError:
            pass  # the client went away
        finally:
            with self._changed:
                self._open_watches -= 1

    def _stream(self, handler: _Handler, namespace: str, selector: str, bookmarks: bool,
                deadline: float, requested: str, gone: str | None,
                generations: tuple[int, int, int]) -> None:  # fmt: skip
        close, abort, marks = generations
        with self._changed:
            if gone or (requested not in ("", "0") and int(requested) < self._oldest):
                handler.send_event(self._expired(requested))
                handler.end_stream()
                return
            if requested in ("", "0"):  # the current state first, as synthetic ADDED events
                position = self._version
                initial = [
                    _event("ADDED", o)
                    for (ns, _), o in sorted(self._objects.items())
                    if ns == namespace and _matches(selector, o["metadata"]["labels"])
                ]
            else:
                position, initial = int(requested), []
        for event in initial:
            handler.send_event(event)
        while True:
            with self._changed:
                while (
                    not (self._pending(position) and not self._held)
                    and close == self._close_generation
                    and abort == self._abort_generation
                    and marks == self._bookmark_generation
                    and time.monotonic() < deadline
                ):
                    self._changed.wait(max(0.0, min(0.5, deadline - time.monotonic())))
                if abort != self._abort_generation:
                    handler.abort()
                    return
                if close != self._close_generation or time.monotonic() >= deadline:
                    break
                if position < self._oldest and self._pending(position) and not self._held:
                    handler.send_event(self._expired(str(position)))
                    break
                changes = [] if self._held else [c for c in self._history if c.version > position]
                mark = marks != self._bookmark_generation and not self._held
                marks = self._bookmark_generation
                version = self._version
            for change in changes:
                position = change.version
                if change.raw is not None:
                    if change.namespace == namespace:
                        handler.send_event(change.raw)
                elif change.namespace == namespace and _matches(
                    selector, change.object["metadata"].get("labels", {})
                ):
                    handler.send_event(_event(change.type, change.object))
            if mark and bookmarks:
                position = max(position, version)
                handler.send_event(_bookmark(str(position)))
        handler.end_stream()

    def _pending(self, position: int) -> bool:
        return self._version > position

    def _expired(self, requested: str) -> Json:
        message = f"too old resource version: {requested} ({self._oldest})"
        return {"type": "ERROR", "object": status(410, "Expired", message)}


def _without_type(obj: Json) -> Json:
    return {k: v for k, v in copy.deepcopy(obj).items() if k not in ("kind", "apiVersion")}


def _event(kind: str, obj: Json) -> Json:
    body = {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", **_without_type(obj)}
    return {"type": kind, "object": body}


def _bookmark(version: str) -> Json:
    """What kube-apiserver sends: an empty object of the watched kind but for resourceVersion."""
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": version},
            "addressType": "",
            "endpoints": None,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: KubeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def setup(self) -> None:
        super().setup()
        with self.api._changed:
            self.api._sockets.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.api._changed:
            self.api._sockets.discard(self.connection)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if self.headers.get("Authorization") != f"Bearer {self.api.token}":
            self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        if url.path == "/api":
            self.send_json(200, {"kind": "APIVersions", "versions": ["v1"]})
            return
        if url.path == "/apis":
            version = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
            group = {"name": "discovery.k8s.io", "versions": [version]}
            self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})
            return
        match = _COLLECTION.match(url.path)
        if match is None:
            missing = "the server could not find the requested resource"
            self.send_json(404, status(404, "NotFound", missing))
            return
        namespace = match.group(1)
        watching = query.get("watch") in ("true", "1")
        if namespace in self.api.forbidden:
            verb = "watch" if watching else "list"
            message = (
                f'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:'
                f'{namespace}:default" cannot {verb} resource "endpointslices" in API group '
                f'"discovery.k8s.io" in the namespace "{namespace}"'
            )
            self.send_json(403, status(403, "Forbidden", message, group="discovery.k8s.io",
                                       kind="endpointslices"))  # fmt: skip
            return
        if watching:
            self.api.watches.append(query)
            self.api._watch(self, namespace, query)
        else:
            self.api.lists.append(query)
            self.api._answer_list(self, self.api._list(namespace, query.get("labelSelector", "")))

    # -- responses ----------------------------------------------------------------------------
    def send_json(self, code: int, body: Json) -> None:
        data = json.dumps(body).encode()
        self.send_head(code, len(data))
        self.wfile.write(data)

    def send_head(self, code: int, length: int) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def send_event(self, event: Json) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _handler_for(api: KubeApiServer) -> type[_Handler]:
    return type("Handler", (_Handler,), {"api": api})
