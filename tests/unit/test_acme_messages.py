"""ACME resources parsed from the server's JSON: problems (with subproblems), orders,
authorizations, a missing member named, and Retry-After in both forms."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ferryman.acme.messages import (
    AcmeError,
    Authorization,
    Directory,
    Order,
    Problem,
    parse_retry_after,
)


def test_a_problem_document_reads_as_type_and_detail_with_its_subproblems() -> None:
    problem = Problem.from_json({
        "type": "urn:ietf:params:acme:error:rejectedIdentifier",
        "detail": "Some names were rejected",
        "status": 400,
        "subproblems": [{"type": "urn:ietf:params:acme:error:malformed", "detail": "bad label", "identifier": {"type": "dns", "value": "a_b.test"}}],
    })
    assert problem.status == 400 and problem.subproblems[0].identifier == "a_b.test"
    assert str(problem) == ("urn:ietf:params:acme:error:rejectedIdentifier: Some names were rejected "
                            "(a_b.test: urn:ietf:params:acme:error:malformed: bad label)")
    error = AcmeError("newOrder failed", problem)
    assert "rejectedIdentifier" in str(error) and error.problem is problem


def test_a_non_object_error_body_is_still_a_problem() -> None:
    problem = Problem.from_json(["odd"], 502)
    assert problem.type == "about:blank" and problem.status == 502 and "odd" in problem.detail


def test_an_order_and_its_authorization_parse() -> None:
    order = Order.from_json("https://ca/o/1", {
        "status": "pending", "authorizations": ["https://ca/a/1"], "finalize": "https://ca/f/1",
        "identifiers": [{"type": "dns", "value": "a.test"}],
    })
    assert order.authorizations == ("https://ca/a/1",) and order.certificate is None and order.identifiers == ("a.test",)
    authz = Authorization.from_json("https://ca/a/1", {
        "identifier": {"type": "dns", "value": "a.test"}, "status": "invalid",
        "challenges": [
            {"type": "tls-alpn-01", "url": "https://ca/c/2", "status": "pending", "token": "t2"},
            {"type": "http-01", "url": "https://ca/c/1", "status": "invalid", "token": "t1",
             "error": {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}},
        ],
    })
    assert authz.challenge("http-01").token == "t1"  # type: ignore[union-attr]
    assert authz.challenge("dns-01") is None
    assert str(authz.failure()) == "urn:ietf:params:acme:error:connection: refused"


def test_a_missing_member_names_the_resource_and_member() -> None:
    with pytest.raises(AcmeError, match=r"order https://ca/o/1 has no 'finalize' str"):
        Order.from_json("https://ca/o/1", {"status": "pending", "authorizations": []})
    with pytest.raises(AcmeError, match="the directory has no 'newOrder'"):
        Directory.from_json({"newNonce": "n", "newAccount": "a"})
    directory = Directory.from_json({"newNonce": "n", "newAccount": "a", "newOrder": "o", "meta": {"termsOfService": "tos"}})
    assert directory.terms_of_service == "tos"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
