"""Shared fixtures: the three users of every access test, and a logged-in client each."""

from __future__ import annotations

import os

import pytest

from accounts.roles import INSTRUCTORS, STUDENTS
from ruddervirt import programs
from ruddervirt.hypervisor import gateway_nat
from tests.helpers import client_for, make_user

# Every program the tests or the code under test start (here, or in a child process: the
# variable is inherited) must be declared in scripts/packages.txt; see programs.py.
os.environ[programs.CHECK_ENV] = "1"
programs.install_audit_hook()

# Network safety: a NAT uplink made by any test (here, or in a worker process: the variable is
# inherited) would end in this namespace, which never exists, so it fails instead of reaching
# the machine's real default route. tests/e2e/test_internet.py alone points it at a stand-in.
NO_UPLINK_NETNS = "rvt-no-uplink-here"
os.environ[gateway_nat.UPLINK_NETNS_ENV] = NO_UPLINK_NETNS


def pytest_configure(config):
    """Every test run names its domains and networks with a prefix of its own, so cleaning
    up after one test run can never touch another's (or a developer's) VMs. A run with
    RUDDERVIRT_ALLOW_INTERNET on is refused: the tests that need internet turn it on
    themselves, behind a stand-in outside (tests/e2e/outside.py)."""
    from django.conf import settings

    settings.RUDDERVIRT_NAME_PREFIX = f"rvt{os.getpid()}-"
    if settings.RUDDERVIRT_ALLOW_INTERNET:
        pytest.exit(
            "run the tests with RUDDERVIRT_ALLOW_INTERNET=false (as `make test` does): test VMs "
            "never get a way to the real outside",
            returncode=4,
        )


GOOD_MANIFEST = """\
vms:
  - name: web
    source:
      url: http://127.0.0.1:9/tiny-20250101.qcow2
      checksum: sha256:aaa34ecb044b48e3b23b0ef56775520a75a43ccc5f3c2e23445fe3a644e554e5
    cloudInit: {}
    provisioners:
      - name: hello
        type: shell
        shell: {inline: echo hello}
"""


@pytest.fixture
def admin_user(db):
    return make_user("root-admin", superuser=True)


@pytest.fixture
def instructor(db):
    return make_user("alice", INSTRUCTORS)


@pytest.fixture
def other_instructor(db):
    return make_user("bob", INSTRUCTORS)


@pytest.fixture
def student(db):
    return make_user("carol", STUDENTS)


@pytest.fixture
def instructor_client(instructor):
    return client_for(instructor)


@pytest.fixture
def student_client(student):
    return client_for(student)


@pytest.fixture
def good_manifest() -> str:
    return GOOD_MANIFEST
