#!/usr/bin/env bash
# Serve the portal (daphne, ASGI) with its RQ workers; Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_SETTINGS_MODULE=ruddervirt.settings
HOST=${RUDDERVIRT_HOST:-127.0.0.1}
PORT=${RUDDERVIRT_PORT:-8000}
# Builds and clones have workers of their own, so long builds never hold up a clone's
# start or stop: build workers serve the `builds` queue only, clone workers `clones`.
BUILD_WORKERS=${RUDDERVIRT_BUILD_WORKERS:-2}
CLONE_WORKERS=${RUDDERVIRT_CLONE_WORKERS:-1}
for n in "$BUILD_WORKERS" "$CLONE_WORKERS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "RUDDERVIRT_BUILD_WORKERS and RUDDERVIRT_CLONE_WORKERS must be at least 1" >&2; exit 2; }
done
pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "Stopping the portal and its workers..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/python manage.py reconcile --quiet 2>/dev/null || true
for i in $(seq 1 "$BUILD_WORKERS"); do
  .venv/bin/python manage.py rqworker builds --name "rudder-$$-build-$i" &
  pids+=($!)
done
for i in $(seq 1 "$CLONE_WORKERS"); do
  .venv/bin/python manage.py rqworker clones default --name "rudder-$$-clone-$i" &
  pids+=($!)
done
# Every minute: clone records follow libvirt, expired or idle clones shut down, leftovers go.
RECONCILE_EVERY=${RUDDERVIRT_RECONCILE_EVERY:-60}
(
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM INT
  while true; do
    sleep "$RECONCILE_EVERY" & nap=$!; wait "$nap"
    .venv/bin/python manage.py reconcile --quiet || true
  done
) &
pids+=($!)
# Every 2 s: clone VMs whose guest answered (agent or SSH banner) are recorded ready.
.venv/bin/python manage.py watch_ready --every "${RUDDERVIRT_READY_EVERY:-2}" &
pids+=($!)
.venv/bin/daphne -b "$HOST" -p "$PORT" ruddervirt.asgi:application &
pids+=($!)
echo "RudderVirt is at http://$HOST:$PORT/ (domain type: ${RUDDERVIRT_DOMAIN_TYPE:-kvm}); Ctrl-C stops it."
wait -n "${pids[@]}" || true
