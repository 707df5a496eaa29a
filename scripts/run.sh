#!/usr/bin/env bash
# Serve the portal (daphne, ASGI) with its RQ workers, the reconcile loop and the readiness
# watcher, supervised by ruddervirt/serve.py: a service that exits is restarted with a back-off
# (and said so), Ctrl-C stops all of them. Settings: README.md; supervision: docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_SETTINGS_MODULE=ruddervirt.settings
# Clone records follow libvirt and leftovers go before the workers start.
.venv/bin/python manage.py reconcile --quiet 2>/dev/null || true
exec .venv/bin/python -m ruddervirt.serve
