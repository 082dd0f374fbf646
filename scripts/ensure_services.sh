#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis servers the tests talk to are up; start them if not.
# The tests never skip when a server is missing: if this cannot start one, it fails loudly.
set -euo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
if ! redis_up; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for _ in $(seq 1 30); do
  if pg_up && redis_up; then exit 0; fi
  sleep 1
done
pg_up || echo "PostgreSQL at 127.0.0.1:5432 is not answering" >&2
redis_up || echo "Redis at 127.0.0.1:6379 is not answering" >&2
exit 1
