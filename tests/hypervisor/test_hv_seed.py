"""NoCloud seed ISOs (read back with isoinfo) and cloud-config merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ruddervirt.hypervisor.seed import (
    cloud_config_with_keys,
    make_nocloud_seed,
    nocloud_meta_data,
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
