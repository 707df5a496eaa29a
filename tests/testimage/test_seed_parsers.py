"""The guest-side parsers and the sudo shim of the test image, run on the host with busybox.

yaml2flat.awk is checked against PyYAML on the shapes that cloud-config, meta-data and
network-config take (hand-written, PyYAML's default output, flow style and JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

GUEST = Path(__file__).resolve().parents[2] / "tools/testimage/guest"
TINY_LIB = GUEST / "usr/lib/tiny"
SUDO = GUEST / "usr/bin/sudo"


def busybox(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["busybox", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


def flatten(text: str) -> list[str]:
    done = busybox("awk", "-f", str(TINY_LIB / "yaml2flat.awk"), stdin=text)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.splitlines()


def _escape(value: object) -> str:
    if value is None:
        return ""
    text = (
        {True: "true", False: "false"}.get(value, str(value))
        if isinstance(value, bool)
        else str(value)
    )
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def expected_flat(node: object, path: str = "") -> Iterator[str]:
    """What yaml2flat.awk should print for the YAML that PyYAML loaded as `node`."""
    if isinstance(node, dict | list):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            child = f"{path}/{key}" if path else str(key)
            if isinstance(value, dict | list):
                yield from expected_flat(value, child)
            else:
                yield f"{child}\t{_escape(value)}"
    else:
        yield f"{path}\t{_escape(node)}"


HAND_WRITTEN = """#cloud-config
hostname: web-1
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8 someone@host   # a comment
users:
  - default
  - name: alice
    shell: /bin/bash
    ssh_authorized_keys:
    - "ssh-rsa AAAA # not a comment"
    - 'it''s quoted'
  - {name: bob, groups: [adm, sudo], sudo: "ALL=(ALL) NOPASSWD:ALL"}
write_files:
- path: /etc/motd
  permissions: '0644'
  content: |
    Hello
      indented \\ backslash

    end
- path: /etc/folded
  content: >-
    folded line
    continues

    new paragraph
runcmd:
  - [sh, -c, "echo hi > /tmp/x"]
  - echo it's fine
empty:
nested:
  a:
    b: 1
    c: ~
  d: []
plain: first
  second line
"""
LONG_KEY = "ssh-rsa " + "A" * 372 + " user@example"
GENERATED = {
    "users": [
        {
            "name": "root",
            "ssh_authorized_keys": [LONG_KEY, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF rudder"],
        }
    ],
    "write_files": [{"path": "/etc/a b", "content": "one\ntwo\n\ttab: x # y\n", "owner": "a:b"}],
    "runcmd": [["echo", "a b"], "echo \"q\" 'x' \\ back"],
    "ssh_pwauth": True,
    "nothing": None,
    "long": "word " * 40,
}
DOCUMENTS = {
    "hand-written": HAND_WRITTEN,
    "pyyaml-block": yaml.safe_dump(GENERATED),
    "pyyaml-flow": yaml.safe_dump(GENERATED, default_flow_style=True),
    "pyyaml-double-quoted": yaml.safe_dump(GENERATED, default_style='"'),
    "json-one-line": json.dumps(GENERATED),
    "json-indented": json.dumps(GENERATED, indent=2),
    "meta-data": "instance-id: iid-abc\nlocal-hostname: web\n",
}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_yaml2flat_agrees_with_pyyaml(name: str) -> None:
    text = DOCUMENTS[name]
    assert flatten(text) == list(expected_flat(yaml.safe_load(text)))


def test_yaml2flat_keeps_a_long_folded_key_whole() -> None:
    lines = flatten(yaml.safe_dump({"ssh_authorized_keys": [LONG_KEY]}))
    assert lines == [f"ssh_authorized_keys/0\t{LONG_KEY}"]


def flat_query(tmp_path: Path, text: str, op: str, key: str) -> subprocess.CompletedProcess[str]:
    flat = tmp_path / "doc.flat"
    flat.write_text("\n".join(flatten(text)) + "\n")
    awk = ["awk", "-v", f"op={op}", "-v", f"key={key}", "-f", str(TINY_LIB / "flat.awk")]
    return busybox(*awk, str(flat))


def test_flat_queries_return_values_unescaped_and_list_children(tmp_path: Path) -> None:
    text = "users:\n- name: a\n  k: [1, 2]\n- name: b\nc: |\n  l1\n  l2\n"
    assert flat_query(tmp_path, text, "get", "users/1/name").stdout == "b"
    assert flat_query(tmp_path, text, "get", "c").stdout == "l1\nl2\n"
    assert flat_query(tmp_path, text, "items", "users").stdout == "0\n1\n"
    assert flat_query(tmp_path, text, "has", "users/0/k/1").returncode == 0
    assert flat_query(tmp_path, text, "get", "missing").returncode == 1


def plan(network_config: object) -> list[list[str]]:
    flat = "\n".join(flatten(yaml.safe_dump(network_config))) + "\n"
    done = busybox("awk", "-f", str(TINY_LIB / "netplan.awk"), stdin=flat)
    return [line.split("\t") for line in done.stdout.splitlines()]


def test_netplan_reads_version_2_static_and_dhcp_entries() -> None:
    config = {
        "network": {
            "version": 2,
            "ethernets": {
                "lan": {
                    "match": {"macaddress": "52:54:00:AB:CD:EF"},
                    "set-name": "lan0",
                    "addresses": ["10.1.0.5/24"],
                    "gateway4": "10.1.0.1",
                    "nameservers": {"addresses": ["10.1.0.1", "10.1.0.2"]},
                },
                "eth1": {"dhcp4": True},
                "eth2": {
                    "addresses": ["10.2.0.5/16"],
                    "routes": [{"to": "default", "via": "10.2.0.1"}],
                },
            },
        }
    }
    assert plan(config) == [
        ["name", "eth1", "-", "dhcp", "-", "-", "-"],
        ["name", "eth2", "-", "static", "10.2.0.5/16", "10.2.0.1", "-"],
        [
            "mac",
            "52:54:00:ab:cd:ef",
            "lan0",
            "static",
            "10.1.0.5/24",
            "10.1.0.1",
            "10.1.0.1,10.1.0.2",
        ],
    ]


def test_netplan_reads_version_1_with_netmask_and_global_dns() -> None:
    config = {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "eth1",
                "mac_address": "52:54:00:aa:bb:cc",
                "subnets": [
                    {
                        "type": "static",
                        "address": "192.168.5.10",
                        "netmask": "255.255.255.0",
                        "gateway": "192.168.5.1",
                    },
                ],
            },
            {"type": "physical", "name": "eth2", "subnets": [{"type": "dhcp"}]},
            {"type": "nameserver", "address": ["1.1.1.1"]},
        ],
    }
    assert plan(config) == [
        ["mac", "52:54:00:aa:bb:cc", "eth1", "static", "192.168.5.10/24", "192.168.5.1", "1.1.1.1"],
        ["name", "eth2", "-", "dhcp", "-", "-", "-"],
    ]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sudo shim escalates unless root")


def sudo(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return busybox("sh", str(SUDO), *args, stdin=stdin)


@needs_root
def test_sudo_shim_reads_exactly_one_password_line_with_dash_s() -> None:
    done = sudo("-S", "sh", "-c", "id -u; cat", stdin="secret\nfor the command\n")
    assert (done.returncode, done.stdout) == (0, "0\nfor the command\n")


@needs_root
def test_sudo_shim_accepts_clustered_flags_user_root_and_double_dash() -> None:
    done = sudo(
        "-SEH", "-n", "-u", "root", "--", "sh", "-c", "echo $HOME $USER; cat", stdin="pw\nx\n"
    )
    assert (done.returncode, done.stdout) == (0, "/root root\nx\n")


@needs_root
def test_sudo_shim_refuses_unknown_options_and_a_missing_command() -> None:
    assert sudo("-x", "true").returncode == 1
    assert sudo("-n").returncode == 1
    assert sudo("-u", "no-such-user", "true").returncode == 1
