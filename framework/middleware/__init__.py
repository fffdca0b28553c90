"""Middleware: one mechanism (``chain``) for client and server; one module per concern."""

from .chain import CallContext, Kind, Method, Middleware, StreamHandler, UnaryHandler, compose

__all__ = [
    "CallContext",
    "Kind",
    "Method",
    "Middleware",
    "StreamHandler",
    "UnaryHandler",
    "compose",
]
