"""Settings for the feedback platform: twelve-factor, every knob is an environment variable.

Defaults are the zero-setup demo: SQLite under var/ and kombu's file-system broker, so `make demo` needs no
server. Production sets DATABASE_URL (Postgres), CELERY_BROKER_URL (Redis) and DEBUG=0; with DEBUG=0 these
settings pass `manage.py check --deploy`. The README has the table of variables.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Core -------------------------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", True)
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var"))).resolve()

_DEV_SECRET_KEY = "dev-only-secret-key-not-for-production-0123456789abcdefghijklmnopqrstuvwxyz"
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG=0")
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "registry",
    "labeling",
    "exports",
    "training",
    "loop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # prod-images: CSP on every response, `private, no-store` for signed-in users (core/middleware.py).
    "core.middleware.SecurityHeadersMiddleware",
]

ROOT_URLCONF = "feedback_app.urls"
WSGI_APPLICATION = "feedback_app.wsgi.application"
ASGI_APPLICATION = "feedback_app.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.roles",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------------------
# Postgres (psycopg 3) via DATABASE_URL in production and CI; otherwise one SQLite file under var/ in WAL mode
# with a busy timeout, so the web process and the Celery worker can write to it side by side.
DATABASE_URL = env_str("DATABASE_URL")
DB_PREPARE_THRESHOLD = env_int("DB_PREPARE_THRESHOLD", 5)
# Postgres: a regular lease and a submission's write are each one statement in autocommit, by the functions
# labeling_lease_regular() and labeling_submit() (migrations 0009, 0010), instead of transactions of two statements
# and BEGIN / COMMIT; off = the Python paths, which SQLite always takes.
DB_HOT_PATH_FUNCTIONS = env_bool("DB_HOT_PATH_FUNCTIONS", True)
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "db.sqlite3"}}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # A file, not :memory:, so that a worker subprocess started by a test sees the test database; one per test
    # process so that two test runs on one checkout do not share it.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(VAR_DIR / f"test_db_{os.getpid()}.sqlite3")
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Parameters bound server-side (Django's default composes each statement's text in Python), and the annotator
    # loop's hot statements prepared once they ran DB_PREPARE_THRESHOLD times on a connection (core.precompiled.
    # preparing(): the rest stays unprepared, as Django leaves it). -1 turns both off: behind a transaction-pooling
    # PgBouncer older than 1.21, prepared statements do not survive the change of server connection.
    if DB_PREPARE_THRESHOLD >= 0:
        DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -------------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- i18n / static ----------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Artifacts (model weights, exports) -------------------------------------------------------------------
ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(VAR_DIR / "artifacts"))).resolve()
# Folders whose model folders admins may import from the web ("Add a base model"); empty: ARTIFACT_ROOT itself.
MODEL_IMPORT_ROOTS = [Path(root).resolve() for root in env_list("MODEL_IMPORT_ROOTS", [])]

# --- Celery -----------------------------------------------------------------------------------------------
# Redis in production. Unset: kombu's file-system transport under var/celery/, which needs no server.
# Task state the app needs lives in our own models, so there is no result backend.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "filesystem://"
CELERY_FILESYSTEM_BROKER_DIR = Path(
    env_str("CELERY_FILESYSTEM_BROKER_DIR", str(VAR_DIR / "celery"))
).resolve()
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # One folder in and out: every producer and consumer on this machine shares the same queue files.
        "data_folder_in": str(CELERY_FILESYSTEM_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_FILESYSTEM_BROKER_DIR / "queue"),
        "control_folder": str(CELERY_FILESYSTEM_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 6 * 3600)}
CELERY_TASK_DEFAULT_QUEUE = "default"
# Training stages hold an accelerator: route them to the `gpu` queue, everything else stays on `default`.
CELERY_TASK_ROUTES = {
    "training.tasks.fail_stale_stages": {
        "queue": "default"
    },  # bookkeeping, must not wait behind a training stage
    "training.tasks.*": {"queue": "gpu"},
}
# A stage that dies with its worker is redelivered rather than lost; one long task per worker process at a time.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE
HEALTH_BROKER_TIMEOUT_S = float(env_str("HEALTH_BROKER_TIMEOUT_S", "2"))
# Training stages write a heartbeat every TRAINING_HEARTBEAT_S; a running stage silent for TRAINING_STALE_AFTER_S
# is marked failed (resumable). Every TRAINING_STALE_CHECK_S each web and worker process runs the job maintenance
# pass (core.jobs.jobs_maintain): that check, then (re)sending queued jobs whose message never reached the broker.
# It needs no Celery beat, no broker and no particular queue's worker: whichever process is alive runs it.
TRAINING_HEARTBEAT_S = float(env_str("TRAINING_HEARTBEAT_S", "10"))
TRAINING_STALE_AFTER_S = float(env_str("TRAINING_STALE_AFTER_S", "120"))
TRAINING_STALE_CHECK_S = float(env_str("TRAINING_STALE_CHECK_S", "60"))
# Live progress (step, metrics, log tail) is written at most this often; the final state is always written.
TRAINING_PROGRESS_WRITE_S = float(env_str("TRAINING_PROGRESS_WRITE_S", "1"))
# A running stage asks for cancel between micro-batches and decode steps; it looks the flag up at most this often.
TRAINING_CANCEL_POLL_S = float(env_str("TRAINING_CANCEL_POLL_S", "0.5"))
# GPUs this worker owns: a stage whose config asks for `processes` > 1 runs as a torch.distributed job of that many
# child processes, one per GPU, and may ask for at most this many (unset: every GPU the worker sees, which
# CUDA_VISIBLE_DEVICES limits; 0 or 1: one process). On a CPU worker it caps gloo processes the same way.
TRAINING_GPUS_PER_WORKER = env_int("TRAINING_GPUS_PER_WORKER", -1)
if TRAINING_GPUS_PER_WORKER < -1:
    raise ImproperlyConfigured("TRAINING_GPUS_PER_WORKER must be 0 or more (unset: all the worker sees)")
# A rank of a distributed stage waiting this long in a collective (a peer hangs) fails the stage instead of hanging.
TRAINING_DISTRIBUTED_TIMEOUT_S = float(env_str("TRAINING_DISTRIBUTED_TIMEOUT_S", "1800"))
# Publishing a job's task: a short bounded retry (about 1.5 s), then the caller hears that the broker is down.
JOBS_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}
# A job published this long ago and still not picked up is published again (its message may be lost, e.g. a
# Redis restart without persistence); tasks claim their row atomically, so a duplicate message does nothing.
JOBS_REDELIVER_AFTER_S = float(env_str("JOBS_REDELIVER_AFTER_S", "1800"))

# --- REST API ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Token first: an anonymous request gets 401 with `WWW-Authenticate: Token`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "EXCEPTION_HANDLER": "core.api.exceptions.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Feedback loop API",
    "DESCRIPTION": "Closed-loop RLHF: prompts, comparisons, rankings, training runs, model versions, exports. "
    "Authenticate with `Authorization: Token <key>` (POST /api/v1/auth/token/ or `manage.py api_token`) or a "
    "session.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from the drf-spectacular-sidecar package: served locally, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Security ---------------------------------------------------------------------------------------------
# Production (DEBUG=0) defaults pass `check --deploy`; each is overridable, e.g. SECURE_SSL_REDIRECT=0 behind a
# TLS-terminating proxy that already redirects, with SECURE_PROXY_SSL_HEADER=1 to trust X-Forwarded-Proto.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Container healthchecks probe plain HTTP from inside; a redirect would hide a failing check.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Large imports are uploaded through the admin page; the labeling app enforces its own, clearer limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024)
# Largest prompt/response/comparison import accepted (upload page and `import_data`); bigger files get a clear error.
LABELING_IMPORT_MAX_BYTES = env_int("LABELING_IMPORT_MAX_BYTES", 20 * 1024 * 1024)
# Uploads up to this size import during the request; larger ones run as a background ImportJob (`default` queue).
LABELING_IMPORT_SYNC_MAX_BYTES = env_int("LABELING_IMPORT_SYNC_MAX_BYTES", 1024 * 1024)
# JSONL exports on Postgres of at least LABELING_EXPORT_PARALLEL_MIN_COMPARISONS comparisons are built by this many
# worker processes (one core each; 1 = always sequential). Same bytes and content hash either way.
LABELING_EXPORT_WORKERS = env_int("LABELING_EXPORT_WORKERS", min(os.cpu_count() or 1, 8))
LABELING_EXPORT_PARALLEL_MIN_COMPARISONS = env_int("LABELING_EXPORT_PARALLEL_MIN_COMPARISONS", 50_000)

# --- prod-images: Content-Security-Policy and e-mail -------------------------------------------------------
# Pages load only this origin's files: no inline <script>, no inline style attributes, no eval (htmx's
# indicator <style> is switched off in base.html; the Swagger UI page is the CSP-friendly split view).
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def email_settings() -> dict[str, object]:
    """E-mail (password reset) from EMAIL_URL, else EMAIL_HOST and friends, else the console backend.

    The default writes each message to the process log, so a password reset without a mail server still reaches
    an operator instead of vanishing. EMAIL_URL: smtp://user:pass@host:25, smtp+tls://… (STARTTLS, port 587),
    smtp+ssl://… (implicit TLS, port 465), console:// or file:///absolute/folder.
    """
    from urllib.parse import unquote, urlsplit

    url = env_str("EMAIL_URL").strip()
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    if not url:
        host = env_str("EMAIL_HOST").strip()
        if not host:
            return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
        return {
            "EMAIL_BACKEND": smtp,
            "EMAIL_HOST": host,
            "EMAIL_PORT": env_int("EMAIL_PORT", 25),
            "EMAIL_HOST_USER": env_str("EMAIL_HOST_USER"),
            "EMAIL_HOST_PASSWORD": env_str("EMAIL_HOST_PASSWORD"),
            "EMAIL_USE_TLS": env_bool("EMAIL_USE_TLS", False),
            "EMAIL_USE_SSL": env_bool("EMAIL_USE_SSL", False),
        }
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "console":
        return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
    if scheme == "file":
        if not parts.path or parts.path == "/":
            raise ImproperlyConfigured("EMAIL_URL=file:// needs a folder, e.g. file:///app/var/mail")
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": parts.path,
        }
    ports = {"smtp": 25, "smtp+tls": 587, "smtp+ssl": 465}
    if scheme not in ports:
        raise ImproperlyConfigured(
            f"EMAIL_URL scheme {parts.scheme!r} is not one of smtp, smtp+tls, smtp+ssl, console, file"
        )
    if not parts.hostname:
        raise ImproperlyConfigured(
            "EMAIL_URL needs a host, e.g. smtp+tls://user:password@mail.example.org:587"
        )
    return {
        "EMAIL_BACKEND": smtp,
        "EMAIL_HOST": parts.hostname,
        "EMAIL_PORT": parts.port or ports[scheme],
        "EMAIL_HOST_USER": unquote(parts.username or ""),
        "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
        "EMAIL_USE_TLS": scheme == "smtp+tls",
        "EMAIL_USE_SSL": scheme == "smtp+ssl",
    }


globals().update(email_settings())
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "feedback-loop@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# One OpenAPI enum name per `status` choice set: drf-spectacular otherwise warns (drf_spectacular.W001), which makes
# `check --deploy --fail-level WARNING` fail, and names the enums after hashes.
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "ComparisonStatusEnum": "labeling.models.Comparison.Status",
    # Exports, import jobs, sampling jobs and training runs: the one job vocabulary; stages say `pending`.
    "JobStatusEnum": "core.models.JobStatus",
    "StageRunStatusEnum": "training.models.StageRun.Status",
    # Named for their model: a stage's and a model version's `kind` appear in several components each.
    "StageRunKindEnum": "training.models.StageRun.Kind",
    "ModelVersionKindEnum": "registry.models.ModelVersion.Kind",
}
# Files served at the site root (favicon.ico, which browsers and the admin request there) by WhiteNoise.
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
# --- end prod-images ---------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# === Abuse resistance (issue #12): shared cache, sign-in lockout, strict input, database outage ======
# Kept in one block: the cache every process shares (throttles and lockouts must hold across gunicorn workers),
# who the client is behind proxies, the sign-in lockout, the JSON limits of the API and the outage answer.
#
# CACHE_URL (or REDIS_URL, or a redis:// CELERY_BROKER_URL) picks Redis; otherwise the database cache table,
# which `migrate` creates. Never LocMem: it is per process, so each worker would count on its own.
CACHE_URL = env_str("CACHE_URL") or env_str("REDIS_URL")
if not CACHE_URL and CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CACHE_URL = CELERY_BROKER_URL
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL in ("", "db://"):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "django_cache"}
    }
else:
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: use redis://host:port/db or db:// (the database)")
# How many proxies in front of the app append to X-Forwarded-For. 0 (default): the header is ignored and the
# client is REMOTE_ADDR, so a client cannot pick its own address to dodge a limit.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
REST_FRAMEWORK["NUM_PROXIES"] = TRUSTED_PROXY_COUNT
# Sign-in lockout (browser, admin and API token): after LOGIN_LOCKOUT_USER_FAILURES failures for a username or
# LOGIN_LOCKOUT_IP_FAILURES from one address, wait LOGIN_LOCKOUT_BASE_S, doubling with each further failure up
# to LOGIN_LOCKOUT_MAX_S; counts are forgotten LOGIN_LOCKOUT_WINDOW_S after the last failure.
LOGIN_LOCKOUT_USER_FAILURES = env_int("LOGIN_LOCKOUT_USER_FAILURES", 5)
LOGIN_LOCKOUT_IP_FAILURES = env_int("LOGIN_LOCKOUT_IP_FAILURES", 20)
LOGIN_LOCKOUT_BASE_S = env_int("LOGIN_LOCKOUT_BASE_S", 60)
LOGIN_LOCKOUT_MAX_S = env_int("LOGIN_LOCKOUT_MAX_S", 3600)
LOGIN_LOCKOUT_WINDOW_S = env_int("LOGIN_LOCKOUT_WINDOW_S", 24 * 3600)
AUTHENTICATION_BACKENDS = ["core.lockout.LockoutBackend", "django.contrib.auth.backends.ModelBackend"]
# API bodies: NUL, lone surrogates and (JSON) nesting deeper than API_JSON_MAX_DEPTH are a 400 naming the field.
API_JSON_MAX_DEPTH = env_int("API_JSON_MAX_DEPTH", 64)
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = [
    "core.api.parsers.StrictJSONParser",
    "core.api.parsers.StrictFormParser",
    "core.api.parsers.StrictMultiPartParser",
]
SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"] = [
    "drf_spectacular.hooks.postprocess_schema_enums",
    "core.api.schema.add_common_error_responses",
]
# While the database is unreachable: 503 with Retry-After (seconds) instead of a 500.
OUTAGE_RETRY_AFTER_S = env_int("OUTAGE_RETRY_AFTER_S", 5)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "core.request_guard.RequestGuardMiddleware",
)
MIDDLEWARE += ["core.lockout.SignInLockedMiddleware", "core.outage.DatabaseOutageMiddleware"]
# === end of the abuse-resistance block =========================================================================

# --- Annotator hot path (issue #17) -----------------------------------------------------------------------
# API tokens are checked with the user's roles in the same query (core.api.authentication); sessions stay
# DRF's. Persistent connections: gunicorn's threads (gunicorn.conf.py) each keep theirs for DB_CONN_MAX_AGE s.
REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] = [
    "core.api.authentication.TokenAuthentication",
    "rest_framework.authentication.SessionAuthentication",
]
# How long one web process remembers an API token's user and roles (core/token_cache.py): a token deleted or a role
# removed in another process keeps working there for up to this long. 0: ask the database on every request.
API_TOKEN_CACHE_SECONDS = env_int("API_TOKEN_CACHE_SECONDS", 5)
# The annotator loop's two API calls, with a token, skip the middleware that only browsers need (core/fast_lane.py).
MIDDLEWARE.insert(0, "core.fast_lane.FastLaneMiddleware")
FAST_LANE_URL_NAMES = ["api:ranking-next", "api:ranking-submit"]
FAST_LANE_SKIPS = [
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
# --- end annotator hot path -------------------------------------------------------------------------------
