"""/metrics on the admin listener of a real ``ferryman run``: every worker's requests are
counted once, totals survive a SIGKILLed worker, reloads and rate-limit refusals show."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.process import LOCAL, children, free_port, http_get, running, wait_until


def config(port: int, admin: int, demo: int, workers: int) -> str:
    return f"""
[server]
workers = {workers}
grace_period = "2s"

[demo]
addr = "{LOCAL}:{demo}"

[admin]
addr = "{LOCAL}:{admin}"

[listeners.web]
addr = "{LOCAL}:{port}"
protocol = "http"
routes = ["limited", "site"]
access_log = "off"

[routes.limited]
path = "/limited"
upstream = "app"
filters = ["rl"]

[routes.site]
upstream = "app"

[upstreams.app]
backends = ["{LOCAL}:{demo}"]

[filters.rl]
kind = "ratelimit"
rate = "1/m"
"""


def scrape(admin: int) -> dict[tuple, float]:
    status, body = http_get(admin, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


REJECTIONS = ("ferryman_ratelimit_rejections_total", (("filter", "rl"),))


def ok_total(samples: dict) -> float:
    key = ("ferryman_http_requests_total", (("listener", "web"), ("route", "site"), ("status", "2xx"), ("upstream", "app")))
    return samples.get(key, 0.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_of_every_worker_survive_a_killed_worker(tmp_path: Path, workers: int) -> None:
    port, admin, demo = free_port(), free_port(), free_port()
    path = tmp_path / "ferryman.toml"
    path.write_text(config(port, admin, demo, workers))
    with running(path) as proc:
        proc.wait_ready()
        for _ in range(20):
            assert http_get(port, "/")[0] == 200
        assert [http_get(port, "/limited")[0] for _ in range(3)] == [404, 429, 429]  # the origin has no /limited; the next two are refused
        wait_until(lambda: ok_total(scrape(admin)) == 20, 10, "20 requests counted")
        # each worker publishes its counters on its own schedule: the 429s may come from the other one
        wait_until(lambda: scrape(admin).get(REJECTIONS) == 2, 10, "2 rejections counted")
        samples = scrape(admin)
        assert samples[REJECTIONS] == 2
        if workers == 1:
            assert proc.stop(10) == 0
            return
        assert samples[("ferryman_backend_healthy", (("backend", f"{LOCAL}:{demo}"), ("upstream", "app"), ("worker", "0")))] == 1
        assert status_of_admin(admin) == 404
        victim = sorted(children(proc.pid))[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(proc.pid)) == 2 and victim not in children(proc.pid), 10, "the worker restarted")
        seen = []
        def restarted() -> bool:
            samples = scrape(admin)
            seen.append(ok_total(samples))
            return sum(v for k, v in samples.items() if k[0] == "ferryman_worker_starts_total") == 3
        wait_until(restarted, 10, "the restarted worker published")
        assert all(v == 20 for v in seen), seen  # never lower after the kill (at most 1 s of counts could be lost; these were published)
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: sum(v for k, v in scrape(admin).items() if k[0] == "ferryman_reloads_total" and ("result", "ok") in k[1]) == 2, 10, "two workers reloaded")
        assert ok_total(scrape(admin)) == 20
        assert proc.stop(10) == 0


def status_of_admin(admin: int) -> int:
    return http_get(admin, "/nope")[0]
