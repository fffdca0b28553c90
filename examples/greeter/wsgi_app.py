"""A Flask app that calls the greeter through ``gz.connect_sync``: gz in synchronous code
(Flask, Django, Celery).

``GET /hello/<name>`` returns the greeter's reply as JSON; a failed gRPC call becomes HTTP 503
with the gRPC status code. With a greeter replica on 127.0.0.1:8080 (README.md), serve the app
with waitress, or any WSGI server::

    export GZ_TARGET_GREETER=direct:///127.0.0.1:8080
    python -m waitress --host 127.0.0.1 --port 8000 examples.greeter.wsgi_app:app

or run this module, which serves it with waitress (port from the command line, else $PORT,
else 8000)::

    python -m examples.greeter.wsgi_app 8000

and then::

    curl http://127.0.0.1:8000/hello/world
    {"message":"Hello, world!","served_by":"127.0.0.1:8080"}

The app calls the logical service ``greeter`` (GREETER_TARGET names another target), which
GZ_TARGET_GREETER or GZ_DISCOVERY resolve; with several replicas, calls spread over them.
"""

import functools
import os
import sys

import grpc
from flask import Flask, jsonify

import gz

from . import greeter_pb2, greeter_pb2_grpc

TARGET = os.environ.get("GREETER_TARGET", "greeter")

app = Flask(__name__)


@functools.cache
def greeter() -> greeter_pb2_grpc.GreeterStub:
    """The process's one stub, shared by all its threads. It is made on the first request, so
    under a pre-fork server (gunicorn) each worker makes its own after the fork."""
    return greeter_pb2_grpc.GreeterStub(gz.connect_sync(TARGET))


@app.get("/hello/<name>")
def hello(name: str):
    reply = greeter().SayHello(greeter_pb2.HelloRequest(name=name), timeout=5)
    return jsonify(message=reply.message, served_by=reply.served_by)


@app.errorhandler(grpc.RpcError)
def grpc_failed(error: grpc.RpcError):
    return jsonify(code=error.code().name, details=error.details()), 503


if __name__ == "__main__":
    from waitress import serve

    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8000"))
    serve(app, host="127.0.0.1", port=port, threads=16)
