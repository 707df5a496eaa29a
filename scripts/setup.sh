#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (root, no systemd) and for every later run.
# Usage: scripts/setup.sh [--for-tests]
# Second runs take seconds: each step checks first and does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FOR_TESTS=0
[ "${1:-}" = "--for-tests" ] && FOR_TESTS=1

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
mkdir -p var

# --- System packages ----------------------------------------------------------------
PACKAGES=(
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config gcc
  redis-server genisoimage ovmf dnsmasq-base tini
  nodejs npm
  # the tiny test guest and installer images are built from these
  linux-image-amd64 linux-image-cloud-amd64 busybox-static dropbear-bin openssh-sftp-server extlinux syslinux-common
  dosfstools mtools e2fsprogs cpio isolinux xorriso
  # real-browser tests
  chromium chromium-driver
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere on some images: a working npm is enough.
if command -v npm >/dev/null 2>&1; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  say "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 1800 apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- Daemons (no systemd here: start them ourselves when not running) ----------------
if ! pgrep -x virtlogd >/dev/null; then say "Starting virtlogd"; virtlogd -d; fi
# libvirtd runs under `tini -s`, a child subreaper: QEMU processes, which libvirt daemonizes,
# become tini's orphans and are reaped the moment they exit. Without it they are PID 1's, and
# an init that reaps lazily (this machine's reaps about once a second) delays every VM stop,
# since libvirt reports a domain off only once its QEMU is gone. A libvirtd already running
# is left alone.
if ! pgrep -x libvirtd >/dev/null; then
  say "Starting libvirtd (under tini, which reaps its QEMU processes at once)"
  setsid tini -s -- libvirtd >>"$ROOT/var/libvirtd.log" 2>&1 </dev/null &
fi
for _ in $(seq 1 50); do
  timeout 5 virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
timeout 5 virsh -c qemu:///system version >/dev/null || { echo "libvirtd does not answer" >&2; exit 1; }
if ! timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  say "Starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --logfile "$ROOT/var/redis.log"
  for _ in $(seq 1 50); do timeout 3 redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- Python virtualenv ------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then say "Creating .venv"; "$PY" -m venv .venv; fi
req_hash=$(sha256sum requirements.txt | cut -d' ' -f1)
if ! stamp_ok .venv/.requirements.sha256 "$req_hash"; then
  say "Installing Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$req_hash" > .venv/.requirements.sha256
fi

# --- Browser libraries from npm (pinned in package-lock.json, never committed) -------------
npm_hash=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if ! stamp_ok node_modules/.rudder.sha256 "$npm_hash"; then
  say "Installing noVNC and CodeMirror from npm"
  timeout 600 npm ci --no-audit --no-fund --loglevel=error
  echo "$npm_hash" > node_modules/.rudder.sha256
fi

# --- Database, static files, first administrator -------------------------------------------
export DJANGO_SETTINGS_MODULE=ruddervirt.settings
.venv/bin/python manage.py migrate --noinput -v 0
.venv/bin/python manage.py collectstatic --noinput -v 0
if [ "$FOR_TESTS" = 0 ]; then .venv/bin/python manage.py ensure_admin; fi

# --- The tiny guest image the end-to-end tests boot ------------------------------------------
if [ "$FOR_TESTS" = 1 ] && [ -f tools/testimage/build.py ]; then
  say "Building (or reusing) the tiny test guest image"
  .venv/bin/python tools/testimage/build.py --out-dir var/cache/testimage >/dev/null
fi
say "Setup complete"
