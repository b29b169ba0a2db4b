"""Automatic certificates with ACME (RFC 8555): HTTP-01 and TLS-ALPN-01 (RFC 8737).

Sans-IO: :mod:`.jws` (signatures), :mod:`.messages` (resources, problems), :mod:`.certs`
(CSR, validation and placeholder certificates), :mod:`.schedule` (when to renew),
:mod:`.storage` (files, no asyncio). I/O: :mod:`.http` (HTTPS client), :mod:`.client`
(the protocol), :mod:`.manager` (issuance and renewal), :mod:`.challenges` (answers served
by the listeners), :mod:`.service` (one process's part). See docs/acme.md.
"""
