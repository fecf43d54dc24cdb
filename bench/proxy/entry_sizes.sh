#!/bin/bash
# How many statements the proxy's sink puts in one stream entry (stream_entry: bundled) under pgbench:
# the proxy on $PORT in front of the local PostgreSQL, writing to $REDIS; pgbench -T 8 through it with
# 1, 4 and 16 clients, simple and prepared. Prints tps, entries, statements and statements an entry.
#   bash bench/proxy/entry_sizes.sh            (REDIS=redis://127.0.0.1:6379/0 PORT=6499 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
REDIS=${REDIS:-redis://127.0.0.1:6379/0}
PORT=${PORT:-6499}
PFX=fdentries$$
DB=fdentries$$
rcli() { redis-cli -u "$REDIS" "$@"; }
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $DB" postgres
pgbench -h 127.0.0.1 -U postgres -i -s 4 -q "$DB" 2>/dev/null
.venv/bin/fasterdata proxy --listen "127.0.0.1:$PORT" --upstream 127.0.0.1:5432 --redis "$REDIS" \
  --prefix "$PFX" --metrics "" > "/tmp/$PFX-proxy.log" 2>&1 &
PROXY=$!
cleanup() {
  kill "$PROXY" 2>/dev/null || true
  wait "$PROXY" 2>/dev/null || true
  rcli --scan --pattern "$PFX:*" | xargs -r redis-cli -u "$REDIS" del > /dev/null
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" postgres
}
trap cleanup EXIT
sleep 3
echo "| pgbench | tps | entries | statements | statements an entry |"
echo "|---|---:|---:|---:|---:|"
for c in 1 4 16; do
  for mode in simple prepared; do
    rcli del "$PFX:statements" "$PFX:statements:held" > /dev/null
    tps=$(pgbench -h 127.0.0.1 -p "$PORT" -U postgres -c "$c" -j 2 -T 8 -M "$mode" "$DB" 2>/dev/null \
          | awk '/^tps/ {print int($3); exit}')
    sleep 1  # the sink's last batch
    entries=$(rcli xlen "$PFX:statements")
    statements=$(rcli hget "$PFX:statements:held" statements)
    echo "| -c $c -M $mode | $tps | $entries | $statements | $(awk "BEGIN {printf \"%.1f\", $statements / $entries}") |"
  done
done
