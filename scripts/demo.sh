#!/usr/bin/env bash
# Start a Celery worker (both queues) and the web server; Ctrl-C stops both.
set -euo pipefail
BIN=${BIN:-.venv/bin}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
VAR=${VAR_DIR:-var}
mkdir -p "$VAR/log"

worker_pid=""
web_pid=""
stop() {
  trap - INT TERM EXIT
  echo
  echo "==> Stopping web server and worker"
  [ -n "$web_pid" ] && kill -TERM "$web_pid" 2>/dev/null || true
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "==> Stopped"
  exit 0
}
trap stop INT TERM EXIT

echo "==> Starting a Celery worker on queues default,gpu (log: $VAR/log/worker.log)"
# The worker and the web server both run the job maintenance pass (dead stages, undelivered jobs): no beat.
"$BIN/celery" -A feedback_app worker -Q default,gpu --pool solo -n "demo@%h" -l info \
  >"$VAR/log/worker.log" 2>&1 &
worker_pid=$!

echo "==> Web server on http://$HOST:$PORT/ (log: $VAR/log/web.log)"
"$BIN/python" manage.py runserver "$HOST:$PORT" --noreload >"$VAR/log/web.log" 2>&1 &
web_pid=$!

echo "==> Log in at http://$HOST:$PORT/ with a demo user printed above."
echo "Press Ctrl-C to stop."
# Exit (and stop the other) as soon as either process dies.
wait -n "$worker_pid" "$web_pid" || true
echo "A process exited; see $VAR/log/. Shutting down."
