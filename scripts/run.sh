#!/usr/bin/env bash
# Serve the portal (daphne, ASGI) with its RQ workers, the reconcile loop and the readiness
# watcher, supervised by ruddervirt/serve.py: a service that exits is restarted with a back-off
# (and said so), Ctrl-C stops all of them. Settings: README.md; supervision: docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_SETTINGS_MODULE=ruddervirt.settings
# KVM unless told otherwise, but only where KVM really runs a guest (/dev/kvm may exist and
# still fail every guest, e.g. broken nested KVM): ruddervirt/hypervisor/kvm_probe.py.
if [ -z "${RUDDERVIRT_DOMAIN_TYPE:-}" ]; then
  if verdict=$(.venv/bin/python -m ruddervirt.hypervisor.kvm_probe); then
    echo "$verdict"; export RUDDERVIRT_DOMAIN_TYPE=kvm
  else
    printf '\033[1mWARNING: %s\033[0m\nUsing TCG (RUDDERVIRT_DOMAIN_TYPE=qemu): VMs run several times slower.\n' "$verdict" >&2
    export RUDDERVIRT_DOMAIN_TYPE=qemu
  fi
fi
# Clone records follow libvirt and leftovers go before the workers start; a pass that hangs
# (libvirt not answering) is cut short after 120 s, and what it says on stderr is shown.
timeout 120 .venv/bin/python manage.py reconcile --quiet ||
  echo "The reconcile before the start failed (status $?); starting the services anyway." >&2
exec .venv/bin/python -m ruddervirt.serve
