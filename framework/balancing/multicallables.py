"""The four multicallable factories every balanced channel (async and sync) has, with the cache
that makes one multicallable per method and (de)serializers, however many stubs are made: the
per-method work (binding middleware, grpc's callables per endpoint) is then done once."""

from __future__ import annotations

from typing import Any

from ..middleware import Kind


class MultiCallables:
    """Mixed into a channel class whose ``_KINDS`` maps each Kind to its multicallable class,
    made as ``cls(channel, method, kind, serializer, deserializer, registered)``."""

    _KINDS: dict[Kind, type[Any]]
    _callables: dict[tuple[Any, ...], Any]

    def unary_unary(self, method, request_serializer=None, response_deserializer=None,
                    _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.UNARY_UNARY, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def unary_stream(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.UNARY_STREAM, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def stream_unary(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.STREAM_UNARY, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def stream_stream(self, method, request_serializer=None, response_deserializer=None,
                      _registered_method=False):  # fmt: skip
        return self._multi_callable(Kind.STREAM_STREAM, method, request_serializer,
                                    response_deserializer, _registered_method)  # fmt: skip

    def _multi_callable(self, kind: Kind, method: str | bytes, serializer: Any,
                        deserializer: Any, registered: bool) -> Any:  # fmt: skip
        key = (kind, method, serializer, deserializer, registered)
        make = self._KINDS[kind]
        try:
            return self._callables[key]
        except KeyError:
            made = make(self, method, kind, serializer, deserializer, registered)
            return self._callables.setdefault(key, made)  # another thread may have made one
        except TypeError:  # an unhashable (de)serializer: not cached, still works
            return make(self, method, kind, serializer, deserializer, registered)
