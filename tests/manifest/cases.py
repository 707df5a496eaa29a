"""Small YAML builders shared by the manifest tests."""

from __future__ import annotations

import textwrap

CHECKSUM = "sha256:" + "a" * 64
PINNED_URL = "https://images.example.edu/debian-12-genericcloud-amd64-20250210.qcow2"
# A pinned, verified source: no warnings from it.
SRC = f"{{url: '{PINNED_URL}', checksum: '{CHECKSUM}'}}"
ISO = f"{{url: 'https://isos.example.edu/debian-12.9.0-amd64-netinst.iso', checksum: '{CHECKSUM}'}}"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def y(text: str) -> str:
    """Dedent a test document so that its first line is line 1. Placeholders: `$SRC` a
    pinned source, `$ISO` a pinned ISO, `$CK` a valid checksum (`$HEX` its bare hex), `$KEY`
    a private key (escaped for a double-quoted YAML string)."""
    text = textwrap.dedent(text).lstrip("\n")
    text = text.replace("$SRC", SRC).replace("$ISO", ISO).replace("$CK", CHECKSUM)
    text = text.replace("$HEX", CHECKSUM.removeprefix("sha256:"))
    return text.replace("$KEY", PRIVATE_KEY.replace("\n", "\\n"))
