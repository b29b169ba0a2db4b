"""HTTP/2, sans-IO: an adapter over python-hyper ``h2`` (:mod:`.endpoint`), header block
translation to and from the engine's heads (:mod:`.headers`) and the flow-control credit
policy (:mod:`.credit`)."""

from .credit import Credit
from .endpoint import PREFACE, ErrorCodes, H2ConnectionError, H2Endpoint, Malformed
from .headers import VERSION, RequestHeads, request_block, request_head, response_block, response_head, trailer_block

__all__ = [
    "PREFACE", "VERSION", "Credit", "ErrorCodes", "H2ConnectionError", "H2Endpoint", "Malformed", "RequestHeads",
    "request_block", "request_head", "response_block", "response_head", "trailer_block",
]
