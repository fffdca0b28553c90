"""The HTTP side port (GZ_METRICS_PORT): /metrics for Prometheus, /healthz and /readyz for probes
and load balancers that do not speak gRPC.

/healthz answers 200 while the process runs. /readyz answers 200 while the server is SERVING and
503 before that and once it starts draining. It runs in a thread of its own, so a busy event loop
never makes a scrape or a probe time out.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder


class ProbeServer:
    """``start()`` listens on host:port (port 0: any free one, see ``.port``)."""

    def __init__(self, host: str, port: int) -> None:
        self.ready = False
        probes = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server looks for
                path = self.path.partition("?")[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(200, encoder(REGISTRY), content_type)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ready = probes.ready
                    self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes and probes every few seconds would drown the service's own log

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._http = server_class((host, port), Handler)
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="gz-probes", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
