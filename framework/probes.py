"""The HTTP side port (GZ_METRICS_PORT): /metrics for Prometheus, /healthz and /readyz for probes
and load balancers that do not speak gRPC.

/metrics is OpenMetrics, with exemplars, when the Accept header asks for it (Prometheus does),
else the classic text format. /healthz answers 200 while the process runs. /readyz answers 200
while the server is SERVING and 503 before that and once it starts draining; in a process that
only calls (httpside.py) it answers 200 while the process runs.
/debug/targets (JSON) and /debug/targets.html show what this process's client channels see
(debug_targets.py). Other paths answer 404, other methods than GET and HEAD 405.

One thread of its own serves it, so a busy service loop never makes a scrape or a probe time
out, and the port costs that one thread however many clients connect. It is bounded: at most
``MAX_CONNECTIONS`` open connections (one more closes the one that has been quiet longest),
``REQUEST_TIMEOUT`` to send a request and to take its reply, ``MAX_HEAD`` bytes of request line
and headers, one request answered at a time, in order.

The thread runs a plain ``selectors`` loop and a small HTTP/1.1 parser rather than http.server
(a thread per connection, kept as long as the client keeps it open) or asyncio streams (about
ten times the work per connection: a burst of 500 connects delayed a probe behind it by tens of
milliseconds, where this loop keeps up with the burst).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger("gz.probes")

REQUEST_TIMEOUT = 5.0
"""Seconds a connection has to send a whole request (from connecting, or from its previous
reply when kept alive) and to take the reply; then the server closes it."""
MAX_CONNECTIONS = 256
"""Open connections at most (well below a default limit of 1024 file descriptors). One more
closes the connection that has been quiet longest."""
MAX_HEAD = 8192
"""Bytes of request line and headers at most; more is answered 431."""
MAX_HEADERS = 64
"""Header lines at most; more is answered 431."""
BACKLOG = socket.SOMAXCONN
"""Connections the kernel queues until the thread accepts them: a burst of connects waits for
none of its SYNs to be sent again (the kernel caps it at net.core.somaxconn)."""

Page = Callable[[Mapping[str, str]], tuple[int, bytes, str]]
"""A path's answer: the request headers -> (status, body, content type)."""
_METHODS = ("GET", "HEAD")
_TEXT = "text/plain; charset=utf-8"
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ProbeServer:
    """Binds host:port at once (port 0: any free one, see ``.port``); ``start()`` serves,
    ``close()`` stops and closes every connection. ``ready`` is what /readyz reports; ``pages``
    answer the other paths (default: this process's /metrics and /debug/targets)."""

    def __init__(self, host: str, port: int, pages: Mapping[str, Page] | None = None) -> None:
        self.ready = False
        self._pages = process_pages() if pages is None else pages
        self._listener = _listen(host, port)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        # open connections by deadline, the earliest (the one quiet longest) first
        self._connections: dict[_Connection, None] = {}
        # connections with another request already in their buffer, answered in turn
        self._queued: dict[_Connection, None] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="gz-probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._thread.is_alive():
            with contextlib.suppress(OSError):  # closed already by a thread that just ended
                self._wake_writer.send(b"x")
            self._thread.join(timeout=REQUEST_TIMEOUT)
        elif self._thread.ident is None:  # never started
            self._release()

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select(self._wait()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif isinstance(key.data, _Connection):
                        self._serve(key.data, events)
                self._take_turns()
                self._expire()
        except Exception:
            log.exception("HTTP side: stopped by an unexpected error")
        finally:
            self._release()

    def _release(self) -> None:
        for connection in list(self._connections):
            self._drop(connection)
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()
        self._selector.close()

    def _wait(self) -> float | None:
        """How long select() may wait: not at all while requests are queued, else until the
        first deadline."""
        if self._queued:
            return 0.0
        first = next(iter(self._connections), None)
        return None if first is None else max(0.0, first.deadline - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        while self._connections:
            first = next(iter(self._connections))
            if first.deadline > now:
                break
            self._drop(first)  # too slow to send its request or to take its reply

    def _accept(self) -> None:
        for _ in range(BACKLOG):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno not in _OUT_OF_DESCRIPTORS:
                    continue  # e.g. ECONNABORTED: that client is gone already
                log.warning("HTTP side: cannot accept a connection: %s", error)
                if self._connections:
                    self._drop(next(iter(self._connections)))
                else:
                    time.sleep(0.05)  # no descriptor to free here: do not spin
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                self._drop(next(iter(self._connections)))
            sock.setblocking(False)
            connection = _Connection(sock)
            self._rearm(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _rearm(self, connection: _Connection) -> None:
        connection.deadline = time.monotonic() + REQUEST_TIMEOUT
        self._connections.pop(connection, None)
        self._connections[connection] = None  # the latest deadline: last in order

    def _drop(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return  # dropped already
        del self._connections[connection]
        self._queued.pop(connection, None)
        self._selector.unregister(connection.sock)
        connection.sock.close()

    def _serve(self, connection: _Connection, events: int) -> None:
        """Read, or send more of a reply; ``events`` 0: answer the next request queued."""
        try:
            if events & selectors.EVENT_READ:
                data = connection.sock.recv(65536)
                if not data:
                    self._drop(connection)  # closed by the client
                elif not connection.last_reply_sent:  # else it closes: read nothing more
                    connection.buffer += data
                    self._answer_next(connection)
            elif events & selectors.EVENT_WRITE:
                self._flush(connection)
            else:
                self._answer_next(connection)
        except OSError:  # reset by the client, or the like
            self._drop(connection)
        except Exception:
            log.exception("HTTP side: a connection failed")
            self._drop(connection)

    def _take_turns(self) -> None:
        """One more request of each connection with several in its buffer (pipelined), so
        that one client's requests never keep another's waiting for more than one reply."""
        for connection in list(self._queued):
            del self._queued[connection]
            self._serve(connection, 0)

    def _answer_next(self, connection: _Connection) -> None:
        """Answer the first complete request in the buffer, if the previous reply is sent; a
        reply the client does not take stops reading until it has."""
        if connection.out or connection.last_reply_sent:
            return
        try:
            request = _take_request(connection.buffer)
        except _BadRequest as error:
            request, reply = None, _reply(error.status, f"{error.reason}\n".encode())
        else:
            if request is None:
                return  # incomplete: wait for more, until the deadline
            reply = self._answer(request)
        connection.last_reply_sent = request is None or not request.keep_alive
        connection.out += reply
        self._rearm(connection)
        self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        """Send what the client takes of the reply and wait to send the rest (reading nothing
        meanwhile); once it is sent, close after the last reply, or go on reading and queue
        the next request if one came with this one."""
        with contextlib.suppress(BlockingIOError):
            del connection.out[: connection.sock.send(connection.out)]
        if not connection.out and connection.last_reply_sent:
            self._drop(connection)
            return
        if bool(connection.out) != connection.writing:
            connection.writing = bool(connection.out)
            events = selectors.EVENT_WRITE if connection.writing else selectors.EVENT_READ
            self._selector.modify(connection.sock, events, connection)
        if not connection.out and connection.buffer:
            self._queued[connection] = None

    def _answer(self, request: _Request) -> bytes:
        path = _path(request.target)
        extra: tuple[str, ...] = ()
        content_type = _TEXT
        page = self._pages.get(path)
        if page is None and path not in _PROBES:
            paths = ", ".join([*self._pages, *_PROBES])
            status, body = 404, f"not found: try {paths}\n".encode()
        elif request.method not in _METHODS:
            status, body, extra = 405, b"method not allowed: use GET\n", ("Allow: GET, HEAD",)
        elif page is not None:
            try:
                status, body, content_type = page(request.headers)
            except Exception:
                log.exception("HTTP side: answering %s failed", path)
                status, body = 500, f"answering {path} failed\n".encode()
        elif path == "/healthz":
            status, body = 200, b"ok\n"
        else:
            ready = self.ready
            status, body = (200, b"ready\n") if ready else (503, b"not ready\n")
        return _reply(status, body, content_type, request=request, extra=extra)


_PROBES = ("/healthz", "/readyz")


def process_pages() -> dict[str, Page]:
    """/metrics (prometheus_client's default registry) and /debug/targets of this process."""
    from . import debug_targets  # grpc: not for a GZ_WORKERS supervisor, which has pages of its own

    pages: dict[str, Page] = {"/metrics": _metrics}
    for path in debug_targets.PATHS:
        pages[path] = lambda _headers, path=path: debug_targets.answer(path)
    return pages


def _metrics(headers: Mapping[str, str]) -> tuple[int, bytes, str]:
    from prometheus_client import REGISTRY
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(headers.get("accept", ""))
    return 200, encoder(REGISTRY), content_type


class _Connection:
    __slots__ = ("buffer", "deadline", "last_reply_sent", "out", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()  # received, not yet answered
        self.out = bytearray()  # a reply not yet taken by the client
        self.deadline = 0.0
        self.last_reply_sent = False  # closes once ``out`` is written
        self.writing = False  # waiting for the client to take ``out`` (not reading)


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked to. A
        request with a body gz does not read (chunked, or over MAX_HEAD) closes it too."""
        if "transfer-encoding" in self.headers or self.body_length > MAX_HEAD:
            return False
        tokens = {token.strip().lower() for token in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def body_length(self) -> int:
        return int(self.headers.get("content-length") or "0")


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _take_request(buffer: bytearray) -> _Request | None:
    """Remove the first whole request (head and a small body) from the buffer; None while it
    is incomplete."""
    while buffer[:1] in (b"\r", b"\n"):  # empty lines before a request are ignored (RFC 9112)
        del buffer[: 2 if buffer[:2] == b"\r\n" else 1]
    ends = [(at, len(blank)) for blank in (b"\n\r\n", b"\n\n") if (at := buffer.find(blank)) >= 0]
    if not ends:
        if len(buffer) > MAX_HEAD:
            raise _BadRequest(431, "request head too large")
        return None
    at, blank = min(ends)
    head_end = at + blank
    if head_end > MAX_HEAD:
        raise _BadRequest(431, "request head too large")
    request = _parse(bytes(buffer[:at]).split(b"\n"))
    if not request.keep_alive:  # the connection closes after the reply: leave any body unread
        buffer.clear()
        return request
    if len(buffer) < head_end + request.body_length:
        return None
    del buffer[: head_end + request.body_length]
    return request


def _parse(lines: list[bytes]) -> _Request:
    if len(lines) > MAX_HEADERS + 1:
        raise _BadRequest(431, "too many headers")
    parts = lines[0].rstrip(b"\r").decode("latin-1").split(" ")
    if len(parts) != 3 or not all(parts):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        raise _BadRequest(505 if version.startswith("HTTP/") else 400, "HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.rstrip(b"\r").decode("latin-1").partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise _BadRequest(400, "malformed header line")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):
        raise _BadRequest(400, "malformed Content-Length")
    return _Request(method, target, version, headers)


def _path(target: str) -> str:
    """The path of an origin-form (``/metrics?x``) or absolute-form (``http://h/metrics``)
    request target."""
    if "://" in target:
        target = "/" + target.partition("://")[2].partition("/")[2]
    return target.partition("?")[0].partition("#")[0]


def _reply(
    status: int,
    body: bytes,
    content_type: str = _TEXT,
    *,
    request: _Request | None = None,
    extra: tuple[str, ...] = (),
) -> bytes:
    """The reply's bytes; without a request (it was malformed) it closes the connection."""
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        *extra,
    ]
    if request is None or not request.keep_alive:
        lines.append("Connection: close")
    elif request.version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if request is not None and request.method == "HEAD" else head + body


def _listen(host: str, port: int) -> socket.socket:
    """A listening non-blocking TCP socket on host:port, bound here so that a taken port fails
    start-up."""
    flags = socket.AI_PASSIVE | socket.AI_NUMERICSERV
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=flags
    )[0]
    # "::" takes IPv4 clients too, as grpc's own port on [::] does
    dualstack = family == socket.AF_INET6 and socket.has_dualstack_ipv6()
    listener = socket.create_server(
        address, family=family, backlog=BACKLOG, dualstack_ipv6=dualstack
    )
    listener.setblocking(False)
    return listener
