"""ServicePlan: the hooks a service's requests run and await, decided when it is built."""

from __future__ import annotations

import socket

import pytest

from ferryman.http.hooks import ProxyHttp
from ferryman.http.service import HOOKS, HttpProxyService


class Mixed(ProxyHttp):
    def request_filter(self, session):  # plain: called inline
        return False

    async def response_filter(self, session, headers):  # a coroutine: awaited
        pass

    def upstream_response_body_filter(self, session, chunk, end):
        return chunk

    async def upstream_peer(self, session):
        raise AssertionError("not called here")


@pytest.fixture
def sock():
    s = socket.socket()
    yield s
    s.close()


def test_the_plan_runs_overridden_hooks_and_awaits_the_coroutines(sock) -> None:
    plan = HttpProxyService("t", sock, Mixed(), forwarded_headers="both", allow_connect=True).plan
    assert (plan.request_filter, plan.await_request_filter) == (True, False)
    assert (plan.response_filter, plan.await_response_filter) == (True, True)
    assert plan.upstream_response_body_filter and plan.response_body_filters
    assert plan.await_upstream_peer
    overridden = {"request_filter", "response_filter", "upstream_response_body_filter"}
    for hook in HOOKS:
        assert getattr(plan, hook) is (hook in overridden), hook
    assert (plan.forwarded, plan.allow_connect) == ("both", True)


def test_an_app_overriding_nothing_runs_no_hook(sock) -> None:
    plan = HttpProxyService("t", sock, ProxyHttp(), forwarded_headers=False).plan
    assert not any(getattr(plan, hook) for hook in HOOKS)
    assert not plan.response_body_filters
    assert (plan.forwarded, plan.allow_connect) == ("", False)
