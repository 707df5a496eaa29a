"""NoCloud seed ISOs (read back with isoinfo) and cloud-config merging."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ruddervirt.hypervisor.seed import (
    RESOLV_CONF_MARK,
    clone_cloud_config,
    cloud_config_with_keys,
    make_nocloud_seed,
    nocloud_meta_data,
    resolv_conf_bootcmd,
)
from ruddervirt.proc import run

OUR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOurKeyOurKeyOurKeyOurKeyOurKeyOurKey build-7"
THEIR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITheirKeyTheirKeyTheirKeyTheirKeyTheir prof"


def iso_files(iso: Path) -> list[str]:
    listing = run(["isoinfo", "-R", "-f", "-i", iso], timeout=30).stdout.decode()
    return sorted(line.strip() for line in listing.splitlines() if line.strip())


def iso_read(iso: Path, name: str) -> str:
    return run(["isoinfo", "-R", "-i", iso, "-x", name], timeout=30).stdout.decode()


def test_seed_iso_has_cidata_label_and_the_files(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    user_data = cloud_config_with_keys(None, [OUR_KEY], "web")
    meta_data = nocloud_meta_data(instance_id="build-7-web", hostname="web")
    network = "version: 2\nethernets: {eth0: {dhcp4: true}}\n"
    make_nocloud_seed(iso, user_data=user_data, meta_data=meta_data, network_config=network)
    description = run(["isoinfo", "-d", "-i", iso], timeout=30).stdout.decode()
    assert "Volume id: cidata" in description
    assert iso_files(iso) == ["/meta-data", "/network-config", "/user-data"]
    assert iso_read(iso, "/user-data") == user_data
    assert yaml.safe_load(iso_read(iso, "/meta-data")) == {
        "instance-id": "build-7-web",
        "local-hostname": "web",
    }
    assert iso_read(iso, "/network-config") == network
    assert not (tmp_path / "seed.iso.partial").exists()


def test_seed_without_network_config_leaves_the_file_out(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    make_nocloud_seed(iso, user_data="#cloud-config\n{}\n", meta_data="instance-id: x\n")
    assert iso_files(iso) == ["/meta-data", "/user-data"]


def test_seed_replaces_an_existing_iso(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    make_nocloud_seed(iso, user_data="#cloud-config\na: 1\n", meta_data="instance-id: a\n")
    make_nocloud_seed(iso, user_data="#cloud-config\nb: 2\n", meta_data="instance-id: b\n")
    assert iso_read(iso, "/user-data") == "#cloud-config\nb: 2\n"


def test_keys_are_added_to_an_empty_config_with_hostname() -> None:
    text = cloud_config_with_keys(None, [OUR_KEY], "web")
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"ssh_authorized_keys": [OUR_KEY], "hostname": "web"}


def test_their_settings_and_keys_are_kept_and_ours_appended() -> None:
    theirs = f"#cloud-config\npackages: [nginx]\nssh_authorized_keys:\n  - {THEIR_KEY}\n"
    config = yaml.safe_load(cloud_config_with_keys(theirs, [OUR_KEY], "web"))
    assert config["packages"] == ["nginx"]
    assert config["ssh_authorized_keys"] == [THEIR_KEY, OUR_KEY]


def test_a_key_they_already_list_is_not_duplicated() -> None:
    theirs = f"ssh_authorized_keys:\n  - '{OUR_KEY}  '\n"
    config = yaml.safe_load(cloud_config_with_keys(theirs, [OUR_KEY, OUR_KEY], None))
    assert len(config["ssh_authorized_keys"]) == 1


def test_their_hostname_wins() -> None:
    config = yaml.safe_load(cloud_config_with_keys("hostname: gateway\n", [OUR_KEY], "web"))
    assert config["hostname"] == "gateway"


def test_a_single_key_string_of_theirs_is_kept() -> None:
    config = yaml.safe_load(
        cloud_config_with_keys(f"ssh_authorized_keys: {THEIR_KEY}\n", [OUR_KEY])
    )
    assert config["ssh_authorized_keys"] == [THEIR_KEY, OUR_KEY]


@pytest.mark.parametrize(
    "text",
    ["#!/bin/sh\necho hello\n", "- a\n- b\n", "#include\nhttps://example.invalid/x\n"],
)
def test_text_that_is_not_a_mapping_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="must be a cloud-config mapping"):
        cloud_config_with_keys(text, [OUR_KEY])


def test_invalid_yaml_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not valid YAML"):
        cloud_config_with_keys("packages: [nginx\n", [OUR_KEY])


def test_keys_that_are_not_a_list_of_strings_are_rejected() -> None:
    with pytest.raises(ValueError, match="ssh_authorized_keys"):
        cloud_config_with_keys("ssh_authorized_keys: {a: 1}\n", [OUR_KEY])


def test_name_servers_become_a_bootcmd_that_runs_before_theirs() -> None:
    theirs = "bootcmd: [[echo, hi]]\n"
    config = yaml.safe_load(cloud_config_with_keys(theirs, [OUR_KEY], name_servers=["10.0.0.1"]))
    assert config["bootcmd"] == [resolv_conf_bootcmd(["10.0.0.1"]), ["echo", "hi"]]
    assert "bootcmd" not in yaml.safe_load(cloud_config_with_keys(theirs[:0], [OUR_KEY]))
    clone = yaml.safe_load(clone_cloud_config("server", ["10.0.0.1", "9.9.9.9"]))
    assert clone == {
        "hostname": "server",
        "users": [],
        "bootcmd": [resolv_conf_bootcmd(["10.0.0.1", "9.9.9.9"])],
    }
    assert "bootcmd" not in yaml.safe_load(clone_cloud_config("server"))


def test_a_bootcmd_of_theirs_that_is_not_a_list_is_rejected() -> None:
    with pytest.raises(ValueError, match="bootcmd must be a list"):
        cloud_config_with_keys("bootcmd: echo hi\n", [OUR_KEY], name_servers=["10.0.0.1"])


def write_resolv_conf(path: Path, *servers: str) -> None:
    """Run the bootcmd's script as cloud-init would (argv, no shell text of ours)."""
    if shutil.which("resolvconf"):
        pytest.skip("this host has resolvconf, which the script leaves in charge")
    run(resolv_conf_bootcmd(list(servers), str(path)), timeout=30)


def test_the_resolv_conf_script_fills_an_empty_file_and_renews_its_own(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("")
    write_resolv_conf(conf, "10.0.0.1", "9.9.9.9")
    assert conf.read_text() == f"{RESOLV_CONF_MARK}\nnameserver 10.0.0.1\nnameserver 9.9.9.9\n"
    write_resolv_conf(conf, "10.5.0.1")  # a clone with other addresses: ours, so renewed
    assert conf.read_text() == f"{RESOLV_CONF_MARK}\nnameserver 10.5.0.1\n"
    (tmp_path / "missing").unlink(missing_ok=True)
    write_resolv_conf(tmp_path / "missing", "10.0.0.1")
    assert "nameserver 10.0.0.1" in (tmp_path / "missing").read_text()


def test_the_resolv_conf_script_leaves_a_file_someone_else_manages(tmp_path: Path) -> None:
    theirs = tmp_path / "resolv.conf"
    theirs.write_text("# dhclient\nnameserver 192.0.2.53\n")
    write_resolv_conf(theirs, "10.0.0.1")
    assert theirs.read_text() == "# dhclient\nnameserver 192.0.2.53\n"
    stub = tmp_path / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    link = tmp_path / "linked.conf"
    link.symlink_to(stub)  # systemd-resolved or resolvconf
    write_resolv_conf(link, "10.0.0.1")
    assert link.is_symlink() and stub.read_text() == "nameserver 127.0.0.53\n"
