"""Settings for the taskengine project, read from the environment with django-environ.

Every knob that differs between a laptop and production comes from an environment
variable; see docs/configuration.md for the full list.
"""

from pathlib import Path

import django
import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env(
    DEBUG=(bool, True),
    ALLOWED_HOSTS=(list, ["127.0.0.1", "localhost", "testserver"]),
    USE_ADVISORY_LOCKS=(bool, False),
    TASKENGINE_POLL_ONLY=(bool, False),
    TASKENGINE_COMPLETER=(bool, True),
    TASKENGINE_QUEUES=(list, ["default", "demo"]),
    TASKENGINE_LOG_FORMAT=(str, "text"),
    CONN_MAX_AGE=(int, 0),
)
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env("DEBUG")
SECRET_KEY = env("SECRET_KEY", default="insecure-dev-key-change-me-in-production")
ALLOWED_HOSTS = env("ALLOWED_HOSTS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    # Django 5.2 LTS: the django-tasks backport is where django.tasks lives (its app
    # connects the framework's signals and system checks); Django 6.0+ ships it.
    *(["django_tasks"] if django.VERSION < (6, 0) else []),
    "taskengine",
    "project",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # No DIRS: the console's templates ship inside the taskengine app.
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The embedded default is a SQLite file beside manage.py; production sets DATABASE_URL
# to a PostgreSQL URL (postgres://user:pass@host:5432/name).
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env("CONN_MAX_AGE")
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# django-prometheus's wrappers of the same backends count queries, errors and query
# time per alias on /metrics (connection.vendor stays "postgresql" / "sqlite").
_PROMETHEUS_ENGINES = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}
DATABASES["default"]["ENGINE"] = _PROMETHEUS_ENGINES.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])

# Parallel test runs (developers, CI) can keep their test databases apart.
_test_suffix = env("TASKENGINE_TEST_DB_SUFFIX", default="")
if DATABASES["default"]["ENGINE"].endswith(".sqlite3"):
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # One writer at a time, taken at BEGIN: the claim cannot deadlock on a
            # lock upgrade, and waiters queue instead of failing with "locked".
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not :memory:, so that real worker subprocesses share the test database.
    (BASE_DIR / "var").mkdir(exist_ok=True)
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test_db{_test_suffix}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{_test_suffix}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
LOGIN_URL = "admin:login"
# CSRF failures on /taskengine/api/ answer JSON (403); elsewhere Django's own page.
CSRF_FAILURE_VIEW = "taskengine.console.access.csrf_failure"

TASKS = {
    "default": {
        "BACKEND": "taskengine.backend.DatabaseBackend",
        "QUEUES": env("TASKENGINE_QUEUES"),
        "OPTIONS": {"database": "default"},
    }
}

TASKENGINE = {
    "USE_ADVISORY_LOCKS": env("USE_ADVISORY_LOCKS"),
    "POLL_ONLY": env("TASKENGINE_POLL_ONLY"),
    "COMPLETER": env("TASKENGINE_COMPLETER"),
    "LOG_FORMAT": env("TASKENGINE_LOG_FORMAT"),
    "LIBPQ_FAST_PATH": env.bool("TASKENGINE_LIBPQ_FAST_PATH", default=False),
}
# Leadership and maintenance timings (seconds), e.g. TASKENGINE_LEADER_TTL_SECONDS=15;
# unset variables keep the defaults of taskengine/conf.py.
for _name in (
    "LEADER_TTL_SECONDS",
    "LEADER_RENEW_SECONDS",
    "LEADER_SAFETY_MARGIN_SECONDS",
    "MAINTENANCE_INTERVAL_SECONDS",
    "SCHEDULER_INTERVAL_SECONDS",
    "WORKER_DEAD_AFTER_SECONDS",
    "HEARTBEAT_SECONDS",
    "VACUUM_INTERVAL_SECONDS",
    "VACUUM_COST_DELAY_MS",  # 0: the leader's vacuum at full speed
):
    if env.str(f"TASKENGINE_{_name}", default=""):
        TASKENGINE[_name] = env.float(f"TASKENGINE_{_name}")
# The leader's vacuum of the job tables: TASKENGINE_VACUUM_DEAD_TUPLES=none turns it off.
if _vacuum := env.str("TASKENGINE_VACUUM_DEAD_TUPLES", default=""):
    TASKENGINE["VACUUM_DEAD_TUPLES"] = None if _vacuum.lower() == "none" else int(_vacuum)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "taskengine": {"()": "taskengine.observability.logs.Formatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "taskengine"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "taskengine": {
            "handlers": ["console"],
            "level": env("TASKENGINE_LOG_LEVEL", default="INFO"),
            "propagate": False,
        },
        "django.tasks": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "django_tasks": {"handlers": ["console"], "level": "WARNING", "propagate": False},  # Django 5.2
    },
}
