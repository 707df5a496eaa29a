"""The HTTP health check (/healthz/ready: the database, Redis, libvirtd and the workers) and
the timeouts of ruddervirt.health's checks. With real workers: test_supervised_portal_e2e."""

from __future__ import annotations

import re
import time

import pytest
import redis
from rq import Worker

from ruddervirt import health, redisconf
from tests.helpers import client_for, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_answer(monkeypatch):
    """No answer cached from an earlier test."""
    monkeypatch.setattr(health, "_cached", None)


@pytest.fixture(autouse=True)
def redis_db_of_its_own(settings):
    """The tests' Redis, database 14: no worker another test registered (a SIGKILLed one
    stays listed for minutes) is counted here. Emptied before and after."""
    settings.REDIS_URL = re.sub(r"db=\d+", "db=14", settings.REDIS_URL)
    assert settings.REDIS_URL.endswith("db=14")
    url = redisconf.with_password(settings.REDIS_URL, settings.REDIS_PASSWORD)
    client = redis.Redis.from_url(url, socket_timeout=10)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def registered(redis_db_of_its_own):
    """Register RQ workers for queues, as `rqworker` does at its start."""

    def register(*queues: str) -> Worker:
        name = f"rvt-health-{time.time_ns()}"
        worker = Worker(list(queues), connection=redis_db_of_its_own, name=name)
        worker.register_birth()
        return worker

    return register


def test_a_database_that_does_not_answer_fails_the_doctor_within_its_timeout(monkeypatch):
    monkeypatch.setattr(health, "_database", lambda: time.sleep(5) or health.Check("x", True, ""))
    started = time.monotonic()
    check = health.database(timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert (check.name, check.ok, check.message) == ("database", False, "no answer within 0.3s")


def test_the_database_check_answers_from_its_own_thread_and_connection():
    assert health.database(timeout=10).ok


def test_a_check_that_raises_is_a_failed_check_not_an_error():
    def broken() -> health.Check:
        raise RuntimeError("driver bug")

    [check] = health.in_threads({"redis": broken}, timeout=5)
    assert not check.ok and check.message == "RuntimeError: driver bug"


def test_workers_fail_until_every_queue_has_one(registered):
    assert health.workers().message.startswith("no worker for builds, clones")
    registered("builds")
    check = health.workers()
    assert not check.ok and check.message == "no worker for clones (builds: 1, clones: 0)"
    registered("clones", "default")
    check = health.workers()
    assert check.ok and check.message == "builds: 1, clones: 1"


def test_workers_with_redis_gone_fail_with_the_reason(settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path}/gone.sock?db=15"
    check = health.workers(timeout=2)
    assert not check.ok and check.message.startswith("cannot list them:")


def test_anyone_is_told_which_checks_fail_and_nothing_else(client):
    answer = client.get("/healthz/ready")
    assert answer.status_code == 503
    body = answer.json()
    assert body == {
        "status": "failing",
        "checks": {"database": "ok", "redis": "ok", "libvirtd": "ok", "workers": "fail"},
    }
    assert "no-store" in answer.headers["Cache-Control"]


def test_with_every_dependency_answering_it_is_200_and_a_superuser_sees_what_was_found(
    registered,
):
    registered("builds")
    registered("clones")
    teacher = client_for(make_user("tess-health", "Instructors"))
    answer = teacher.get("/healthz/ready")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok" and "detail" not in answer.json()
    detail = client_for(make_user("root-health", superuser=True)).get("/healthz/ready").json()
    assert detail["detail"]["workers"] == "builds: 1, clones: 1"
    assert "answers" in detail["detail"]["libvirtd"]


def test_the_answer_is_reused_for_a_few_seconds(monkeypatch, client):
    rounds = []
    monkeypatch.setattr(health, "portal_checks", lambda: rounds.append(1) or [])
    for _ in range(20):
        assert client.get("/healthz/ready").status_code == 200
    assert len(rounds) == 1


def test_the_health_checks_are_never_redirected_to_https(settings, client):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/login/").status_code == 301
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz/ready").status_code in (200, 503)


def test_the_health_checks_take_no_post(client):
    assert client.post("/healthz/ready").status_code == 405
    assert client.get("/healthz").content == b"ok"
