#!/usr/bin/env bash
# Start two Celery workers (one per queue) and the web server; Ctrl-C stops all of them.
#
# One worker per queue, so exports and sampling (`default`, seconds) never wait behind a training stage (`gpu`,
# minutes), as in docker/compose.yaml.
set -euo pipefail
BIN=${BIN:-.venv/bin}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
VAR=${VAR_DIR:-var}
mkdir -p "$VAR/log"

pids=()
watcher_pid=""
stop() {
  trap - INT TERM EXIT
  echo
  echo "==> Stopping web server and workers"
  [ -n "$watcher_pid" ] && kill -TERM "$watcher_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # A worker in the middle of a task finishes it first (Celery's warm shutdown); a demo stop must not wait for a
  # training stage. After STOP_GRACE_S the rest are killed: an interrupted stage is marked dead and can be resumed.
  for _ in $(seq $((${STOP_GRACE_S:-15} * 2))); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for pid in "${pids[@]}" $watcher_pid; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "==> Stopped"
  exit 0
}
trap stop INT TERM EXIT

# GNU make forwards SIGTERM to its recipe but not SIGINT: when only make gets Ctrl-C (a `kill -INT` of its pid,
# an IDE's stop button), it blocks SIGINT while its handler waits for this script, which would run forever. Watch
# the make above us (the recipe's shell may sit between): when it has SIGINT blocked (inside that handler) or is
# gone, stop as if Ctrl-C came here.
make_ancestor() {
  local pid=$PPID
  for _ in 1 2 3; do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "make" ] && { echo "$pid"; return; }
    pid=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return
    [ -n "$pid" ] && [ "$pid" -gt 1 ] || return
  done
}
interrupted() {  # pid: gone, or SIGINT (bit 2 of the blocked mask) blocked
  local blocked
  blocked=$(awk '/^SigBlk:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 0
  [ -n "$blocked" ] || return 0
  (((16#$blocked & 2) != 0))
}
make_pid=$(make_ancestor || true)
if [ -n "$make_pid" ]; then
  (
    while sleep 0.5; do
      if interrupted "$make_pid"; then
        kill -INT $$
        exit 0
      fi
    done
  ) &
  watcher_pid=$!
fi

celery_worker() {  # name queue log [extra args...]
  local name=$1 queue=$2 log=$3
  shift 3
  "$BIN/celery" -A feedback_app worker -Q "$queue" --pool solo -n "$name@%h" -l info "$@" >"$log" 2>&1 &
  pids+=($!)
}

# The workers and the web server all run the job maintenance pass (dead stages, undelivered jobs): no beat.
echo "==> Starting a Celery worker on queue default: exports, sampling (log: $VAR/log/worker-default.log)"
celery_worker demo-default default "$VAR/log/worker-default.log"
echo "==> Starting a Celery worker on queue gpu: training stages (log: $VAR/log/worker-gpu.log)"
celery_worker demo-gpu gpu "$VAR/log/worker-gpu.log"

echo "==> Web server on http://$HOST:$PORT/ (log: $VAR/log/web.log)"
"$BIN/python" manage.py runserver "$HOST:$PORT" --noreload >"$VAR/log/web.log" 2>&1 &
pids+=($!)

echo "==> Log in at http://$HOST:$PORT/ with a demo user printed above."
echo "Press Ctrl-C to stop."
# Exit (and stop the others) as soon as any process dies.
wait -n "${pids[@]}" || true
echo "A process exited; see $VAR/log/. Shutting down."
