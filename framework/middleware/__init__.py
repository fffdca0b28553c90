"""Middleware: one mechanism (``chain``) for client and server; one module per concern."""

from .chain import (
    CallContext,
    CallObserver,
    Kind,
    Method,
    Middleware,
    StreamHandler,
    UnaryHandler,
    compose,
)

__all__ = [
    "CallContext",
    "CallObserver",
    "Kind",
    "Method",
    "Middleware",
    "StreamHandler",
    "UnaryHandler",
    "compose",
]
