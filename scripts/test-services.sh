#!/usr/bin/env bash
# Run a command with a private Postgres and Redis, started in a temp folder on free loopback ports and stopped on
# exit (also on failure or Ctrl-C). Installs Debian's postgresql / redis-server / chromium when missing.
#   scripts/test-services.sh .venv/bin/pytest -q
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_apt=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need_apt+=(postgresql)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v chromium >/dev/null || need_apt+=(chromium)
# Lints docker/compose.yaml without a Docker engine (tests/test_docker_files.py).
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing Debian packages: ${need_apt[*]}. Install them (sudo apt-get install ${need_apt[*]}) and re-run." >&2
    exit 1
  fi
  log "Installing ${need_apt[*]} with apt-get (once)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

workdir=$(mktemp -d /tmp/feedback-test-services.XXXXXX)
chmod 755 "$workdir"
pg_port=$(free_port)
redis_port=$(free_port)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # initdb refuses to run as root: the cluster belongs to the postgres system user.
  chown postgres "$workdir"
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  status=$?
  log "Stopping Postgres and Redis"
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$workdir/pg" -m immediate stop >/dev/null 2>&1 || true
  [ -f "$workdir/redis.pid" ] && kill "$(cat "$workdir/redis.pid")" 2>/dev/null || true
  rm -rf "$workdir"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "Starting Postgres on 127.0.0.1:$pg_port"
"${as_pg[@]}" "$pg_bin/initdb" -D "$workdir/pg" -U feedback --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$workdir/pg" -l "$workdir/pg.log" -w \
  -o "-p $pg_port -k $workdir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
  start >/dev/null
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U feedback feedback

log "Starting Redis on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$workdir/redis.pid" --logfile "$workdir/redis.log" --dir "$workdir"
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

export DATABASE_URL="postgres://feedback@127.0.0.1:$pg_port/feedback"
export REDIS_TEST_URL="redis://127.0.0.1:$redis_port/0"
export CELERY_BROKER_URL="$REDIS_TEST_URL"
"$@"
