"""The validator refuses what the engine would refuse, with path and line, from the same
rule (`fetchpolicy.url_refusal`): literal internal addresses and `file://` outside the
allowed folders; the portal applies the host's settings when a manifest is saved."""

from __future__ import annotations

import pytest

from modules.services import validate_for
from ruddervirt.fetch_settings import portal_fetch_policy
from ruddervirt.fetchpolicy import FetchPolicy, parse_networks
from ruddervirt.manifest import validate
from ruddervirt.runtime import engine_config
from tests.helpers import make_user

STRICT = FetchPolicy()


def manifest(source_url: str, *, iso: str = "", file_url: str = "https://example.com/a") -> str:
    isos = f'    isos: [{{url: "{iso}"}}]\n' if iso else ""
    source = "{blank: true}" if iso else f'{{url: "{source_url}"}}'
    return f"""\
files:
  - name: data
    url: "{file_url}"
vms:
  - name: web
    source: {source}
{isos}"""


def errors(text: str, policy: FetchPolicy | None) -> list[tuple[str, int | None, str]]:
    return [(p.path, p.line, p.message) for p in validate(text, fetch_policy=policy).errors]


def test_the_metadata_address_in_a_source_url_is_an_error_with_path_and_line():
    found = errors(manifest("http://169.254.169.254/latest/meta-data/"), STRICT)
    assert len(found) == 1
    path, line, message = found[0]
    assert (path, line) == ("vms[0].source.url", 6)
    assert "169.254.169.254 is a link-local address" in message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/x.qcow2", "http://localhost/x.qcow2", "http://[::1]/x.qcow2",
     "http://10.0.0.1/x.qcow2", "http://100.64.1.1/x.qcow2"],
)  # fmt: skip
def test_internal_addresses_in_file_urls_are_errors(url):
    found = errors(manifest("https://example.com/x.qcow2", file_url=url), STRICT)
    assert [(p, line) for p, line, _m in found] == [("files[0].url", 3)]


def test_an_internal_address_in_an_iso_url_is_an_error():
    found = errors(manifest("", iso="http://192.168.0.10/debian.iso"), STRICT)
    assert [p for p, _line, _m in found] == ["vms[0].isos[0].url"]


def test_file_urls_are_errors_unless_their_folder_is_allowed(tmp_path):
    text = manifest("file:///etc/shadow")
    [(path, _line, message)] = errors(text, STRICT)
    assert path == "vms[0].source.url" and "file:// sources are disabled" in message
    allowed = FetchPolicy(file_source_dirs=(tmp_path,))
    assert "outside the folders" in errors(text, allowed)[0][2]
    assert errors(manifest((tmp_path / "ok.img").as_uri()), allowed) == []


def test_allowed_networks_and_public_names_pass():
    loopback = FetchPolicy(allow_nets=parse_networks("127.0.0.0/8"))
    assert errors(manifest("http://127.0.0.1:9/x.qcow2"), loopback) == []
    assert errors(manifest("https://cloud.debian.org/images/x.qcow2"), STRICT) == []


def test_without_a_policy_the_validator_leaves_addresses_to_the_engine():
    assert errors(manifest("http://169.254.169.254/x"), None) == []


def test_the_portal_refuses_to_save_a_manifest_fetching_the_metadata_service(db, settings):
    settings.RUDDERVIRT_FETCH_ALLOW_NETS = ()
    user = make_user("alice-sources", superuser=True)
    result = validate_for(manifest("http://169.254.169.254/latest/user-data"), user=user)
    assert [(p.path, p.line) for p in result.errors] == [("vms[0].source.url", 6)]


def test_the_engine_and_the_validator_take_the_same_policy_from_the_settings(settings, tmp_path):
    settings.RUDDERVIRT_FILE_SOURCE_DIRS = (tmp_path,)
    settings.RUDDERVIRT_FETCH_ALLOW_NETS = parse_networks("127.0.0.0/8")
    settings.RUDDERVIRT_MAX_DOWNLOAD_BYTES = 123
    expected = FetchPolicy(
        file_source_dirs=(tmp_path,), allow_nets=parse_networks("127.0.0.0/8"), max_bytes=123
    )
    assert portal_fetch_policy() == expected
    assert engine_config().fetch_policy == expected
