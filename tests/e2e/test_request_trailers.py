"""Request trailers go upstream, but never fields a trailer must not carry (RFC 9110 6.5.1):
no filter sees trailers, and some origins merge them into the header section."""

from __future__ import annotations

import json

from support.h2_origin import H2Origin
from support.http_proxy import App, Client, start_proxy, stop

from ferryman.net.addr import parse_address
from ferryman.net.connect import Peer


async def test_framing_routing_and_credential_fields_are_dropped_from_request_trailers() -> None:
    origin = await H2Origin().start()  # echoes the trailers it received
    proxy = await start_proxy(App(Peer(parse_address(f"127.0.0.1:{origin.port}"), connect_timeout=2.0, protocol="h2c")))
    client = await Client.open(proxy)
    try:
        client.send(b"POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nx-checksum: 7\r\nAuthorization: Bearer stolen\r\n"
                    b"X-Forwarded-For: 10.6.6.6\r\nCookie: admin=1\r\nForwarded: for=10.6.6.6\r\ngrpc-status: 0\r\n\r\n")
        status, _, body = await client.response()
        assert status == 200
        echo = json.loads(body)
        assert echo["body"] == "hello"
        assert echo["trailers"] == [["x-checksum", "7"], ["grpc-status", "0"]]
        # framing fields in trailers are refused outright by the parser (400)
        client2 = await Client.open(proxy)
        client2.send(b"POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n")
        assert (await client2.response())[0] == 400
        await client2.close()
    finally:
        await client.close()
        await stop(proxy)
        await origin.close()
