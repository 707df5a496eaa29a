"""`sshPort` on a real Debian 12 guest: the instructor's cloud-config moves sshd to port 2222
and the build reaches it there (through the management forward, whose guest port follows
the manifest), runs its steps as `debian` and captures the template.

The build can only succeed when the engine connects to 2222: the step checks, inside the
guest, that sshd listens on 2222 and no longer on 22.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builds.models import BuildStatus, BuildStep
from builds.runner import execute_build
from builds.services import submit_manifest
from tests.debianimage.conftest import debian_image  # noqa: F401  (the fixture)
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.debian,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),  # no build leftovers; the template goes after
]

MANIFEST = """\
timeout: 20m
vms:
  - name: deb
    source: {{url: "file://{image}"}}
    resources: {{cpu: 1, memory: 768Mi}}
    disks: [{{name: root, size: 4Gi}}]
    communicator: {{sshUsername: debian, sshPort: 2222, sshTimeout: 12m}}
    cloudInit:
      userData: |
        #cloud-config
        write_files:
          - path: /etc/ssh/sshd_config.d/10-port.conf
            content: "Port 2222\\n"
        runcmd:
          - [systemctl, restart, ssh]
    provisioners:
      - name: sshd on 2222 only
        type: shell
        shell:
          inline: |
            ss -Htln 'sport = :2222' | grep -q . || {{ echo "sshd is not on 2222"; exit 1; }}
            if ss -Htln 'sport = :22' | grep -q .; then echo "sshd still on 22"; exit 1; fi
            echo "sshd listens on 2222 only"
"""


def test_a_debian_build_reaches_its_guest_on_the_ssh_port_of_the_manifest(
    debian_image: Path,  # noqa: F811
    storage: Path,
    settings,
) -> None:
    settings.RUDDERVIRT_FILE_SOURCE_DIRS = [debian_image.parent]
    user = make_user("debian-port", superuser=True)
    text = MANIFEST.format(image=debian_image)
    build = execute_build(
        submit_manifest(text=text, module_name="deb-port", user=user, queue=False).pk
    )
    log = "\n".join(build.log_lines.values_list("text", flat=True))
    assert build.status == BuildStatus.SUCCEEDED, f"{build.error}\n{log[-3000:]}"
    step = BuildStep.objects.get(vm__build=build, name="sshd on 2222 only")
    assert step.status == "Succeeded"
    assert "sshd listens on 2222 only" in log
