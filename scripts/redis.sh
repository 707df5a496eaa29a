#!/usr/bin/env bash
# RudderVirt's own Redis: on a unix socket only root can open (no TCP port at all), with a
# password on top. RQ workers unpickle what they find in it as root, so nobody else may write.
# Usage: scripts/redis.sh VAR_DIR     (setup.sh runs it with var/; idempotent: a second run only
# checks that Redis answers)
# Creates, all 0600 from the first byte (umask 077):
#   VAR_DIR/redis-password   the password (read by ruddervirt/settings.py)
#   VAR_DIR/redis.sock       the socket (0700: only root connects), redis.log, redis.pid
# Its own instance, never someone else's: a Redis already running on 127.0.0.1:6379 (Debian's
# packaged one, say) is neither used nor changed. Nothing is saved to disk (--save '').
set -euo pipefail
VAR=${1:?usage: scripts/redis.sh VAR_DIR}
umask 077
mkdir -p "$VAR"
VAR=$(cd "$VAR" && pwd) # absolute: redis-server changes to --dir before opening its log
SOCK=$VAR/redis.sock
PASSFILE=$VAR/redis-password

if [ ! -s "$PASSFILE" ]; then
  tmp=$(mktemp "$VAR/.redis-password.XXXXXX")
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp"
  mv -n "$tmp" "$PASSFILE"
  rm -f "$tmp"
fi
chmod 600 "$PASSFILE"
REDISCLI_AUTH=$(cat "$PASSFILE")
export REDISCLI_AUTH # redis-cli reads it from there: the password is never in an argv

answer() { timeout 3 redis-cli -s "$SOCK" ping 2>&1 || true; }
case "$(answer)" in
  PONG) exit 0 ;;
  *NOAUTH* | *WRONGPASS*)
    echo "A Redis answers on $SOCK but not with the password in $PASSFILE." >&2
    echo "Stop it (its pid is in $VAR/redis.pid) or put its password back, then run again." >&2
    exit 1 ;;
esac
rm -f "$SOCK" # a stale socket of a Redis that is gone
printf '\033[1m==> %s\033[0m\n' "Starting RudderVirt's Redis on $SOCK"
printf 'requirepass %s\n' "$REDISCLI_AUTH" |
  redis-server - --daemonize yes --port 0 --unixsocket "$SOCK" --unixsocketperm 700 \
    --save '' --appendonly no --dir "$VAR" --logfile "$VAR/redis.log" --pidfile "$VAR/redis.pid" \
    >/dev/null
for _ in $(seq 1 50); do
  [ "$(answer)" = PONG ] && exit 0
  sleep 0.1
done
echo "Redis did not start on $SOCK: see $VAR/redis.log" >&2
exit 1
