"""Sans-IO HTTP/1.1 codec: parsers (bytes → events), serializer (heads → bytes), header
helpers. No I/O here: the downstream/upstream sessions own the sockets."""

from .events import (
    CHUNKED_BODY,
    END_OF_MESSAGE,
    NO_BODY,
    UNTIL_CLOSE_BODY,
    BodyFraming,
    BodyKind,
    Data,
    EndOfMessage,
    H1Error,
    Headers,
    RequestHead,
    ResponseHead,
    Trailers,
)
from .parser import Event, RequestParser, ResponseParser

__all__ = [
    "BodyFraming",
    "BodyKind",
    "CHUNKED_BODY",
    "Data",
    "END_OF_MESSAGE",
    "EndOfMessage",
    "Event",
    "H1Error",
    "Headers",
    "NO_BODY",
    "RequestHead",
    "RequestParser",
    "ResponseHead",
    "ResponseParser",
    "Trailers",
    "UNTIL_CLOSE_BODY",
]
