#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (root, no systemd) and for every later run.
# Usage: scripts/setup.sh [--for-tests] [--with PACKAGE]... | --list-packages [--with PACKAGE]...
#   --with PACKAGE  also that optional: package of scripts/packages.txt (`make bench`: packer)
# Second runs take seconds: each step checks first and does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FOR_TESTS=0
WITH=" "
LIST=0
usage() { echo "usage: $0 [--for-tests] [--with PACKAGE]... | --list-packages [--with PACKAGE]..." >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --for-tests) FOR_TESTS=1 ;;
    --with)
      [ $# -ge 2 ] || usage
      grep -q "^optional:$2 " scripts/packages.txt || { echo "$0: $2 is not an optional package of scripts/packages.txt" >&2; exit 2; }
      WITH+="$2 "; shift ;;
    --list-packages) LIST=1 ;;
    *) usage ;;
  esac
  shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# --- System packages: exactly those of scripts/packages.txt ------------------------------------
# One line there per package: PACKAGE[|ALTERNATIVE] PROGRAM... (@venv lines are not installed
# here; optional: ones only when named with --with). --list-packages prints what this installs,
# one entry a line.
declared_packages() {
  local name rest
  while read -r name rest; do
    case "$name" in
      '' | '#'* | @venv) continue ;;
      optional:*) [[ "$WITH" == *" ${name#optional:} "* ]] && printf '%s\n' "${name#optional:}"; continue ;;
    esac
    printf '%s\n' "$name"
  done <scripts/packages.txt
}
if [ "$LIST" = 1 ]; then declared_packages; exit 0; fi
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
while read -r entry; do # "a|b": either is enough; the first is installed when neither is
  IFS='|' read -r -a alternatives <<<"$entry"
  found=0
  for p in "${alternatives[@]}"; do if installed "$p"; then found=1; break; fi; done
  [ "$found" = 1 ] || missing+=("${alternatives[0]}")
done < <(declared_packages)
if [ ${#missing[@]} -gt 0 ]; then
  say "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 1800 apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- var/: secrets, the database, Redis' socket (docs/security.md) ----------------------------
# 0711: QEMU (libvirt-qemu) must traverse it to var/storage and var/cache, but nobody else may
# list it; every secret in it is created 0600 (umask 077) and older ones are tightened here.
mkdir -p var
chmod 0711 var
for f in var/secret_key var/admin-credentials.txt var/redis-password var/ruddervirt.sqlite3 \
  var/ruddervirt.sqlite3-wal var/ruddervirt.sqlite3-shm; do
  if [ -e "$f" ]; then chmod go= "$f"; fi
done

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
# RudderVirt's own Redis on var/redis.sock (root only) with the password in var/redis-password;
# a Redis already on 127.0.0.1:6379 (Debian's own, say) is left alone.
scripts/redis.sh "$ROOT/var"

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
(umask 077 && .venv/bin/python manage.py migrate --noinput -v 0)
.venv/bin/python manage.py collectstatic --noinput -v 0
# Prints the first administrator's password on the run that creates it, and only then.
if [ "$FOR_TESTS" = 0 ]; then (umask 077 && .venv/bin/python manage.py ensure_admin); fi

# --- The tiny guest image the end-to-end tests boot ------------------------------------------
if [ "$FOR_TESTS" = 1 ] && [ -f tools/testimage/build.py ]; then
  say "Building (or reusing) the tiny test guest image"
  .venv/bin/python tools/testimage/build.py --out-dir var/cache/testimage >/dev/null
fi
# The Debian 12 test image (mmdebstrap from the Debian archive): ~2.5 min the first time, then
# reused from ${RUDDERVIRT_IMAGE_CACHE:-/var/lib/ruddervirt/cache/images} until its recipe changes.
if [ "$FOR_TESTS" = 1 ] && [ -f tools/debianimage/build.py ]; then
  say "Building (or reusing) the Debian 12 test image"
  .venv/bin/python tools/debianimage/build.py >/dev/null
fi
say "Setup complete"
