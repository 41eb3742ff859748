"""gunicorn settings, read from the working directory (the repository root, /app in the image).

Annotator requests are short and mostly wait on Postgres, so each worker process runs a pool of threads
(`gthread`): one process per core does the Python work, the threads overlap the database round trips, and
keep-alive connections are held by the worker's event loop rather than by a thread. Each thread keeps its own
persistent database connection (settings: DB_CONN_MAX_AGE), so Postgres sees at most workers × threads
connections per web container. Every value can be overridden by the environment or the command line
(WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_CMD_ARGS, --workers …).
"""

import os

workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 2)
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 8)
# Browsers and API clients reuse their connection between an annotator's requests.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE") or 30)
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 60)
graceful_timeout = 30
# The heartbeat file of each worker lives in memory where there is /dev/shm (containers often mount /tmp on disk).
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
