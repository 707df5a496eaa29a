"""RudderVirt settings: one file, driven by environment variables.

Every setting that differs between a laptop, CI and a production host is read
from the environment here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from ruddervirt import hostfiles, redisconf
from ruddervirt.fetchpolicy import parse_folders, parse_networks

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name, str(default))).resolve()


def env_bytes(name: str, default: str) -> int:
    """A size: bytes, or a number with Ki, Mi, Gi or Ti (`64Gi`)."""
    value = os.environ.get(name, default).strip()
    powers = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}
    if value[-2:] in powers:
        return int(value[:-2]) * 1024 ** powers[value[-2:]]
    return int(value)


VAR_DIR = env_path("RUDDERVIRT_VAR_DIR", BASE_DIR / "var")
# Secrets, the database and Redis' socket live here: nobody else may list it (0711).
hostfiles.private_dir(VAR_DIR)

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # A per-checkout key kept out of git (0600 from its creation), so a fresh clone works
    # without configuration and sessions survive restarts.
    SECRET_KEY = hostfiles.django_secret_key(VAR_DIR / "secret_key")

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

# --- HTTPS behind a reverse proxy (docs/operations.md#tls-and-the-reverse-proxy) ----------
# All off by default: `make run` serves plain HTTP on loopback, where Secure cookies would
# never be sent back and a redirect to https would lead nowhere. deploy/ruddervirt.env turns
# them on for a portal behind deploy/nginx/ruddervirt.conf.
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", False)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Monitoring asks the portal itself over plain HTTP on loopback: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz(/|$)"]
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
# Only a proxy that always sets X-Forwarded-Proto itself (nginx's proxy_set_header replaces
# what the client sent) may be trusted with it: anyone who reaches daphne directly could
# otherwise claim https. Hence a switch of its own, off unless told.
if env_bool("DJANGO_TRUSTED_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = env_bool("DJANGO_USE_X_FORWARDED_HOST", False)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "accounts",
    "modules",
    "jobs",
    "builds",
    "clones",
    "consoles",
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
]

ROOT_URLCONF = "ruddervirt.urls"
ASGI_APPLICATION = "ruddervirt.asgi.application"
WSGI_APPLICATION = None

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
                "accounts.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'ruddervirt.sqlite3'}"),
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite would create the file with the umask (world-readable: sessions, password
    # hashes); an empty file made 0600 first is a valid database, and SQLite gives its -wal
    # and -shm files the database's mode.
    if str(DATABASES["default"]["NAME"]) not in {"", ":memory:"}:
        hostfiles.touch_private(Path(DATABASES["default"]["NAME"]))
    # A file, not memory, so a worker process in an end-to-end test sees the test data.
    # One per test run, so that two test runs on one machine never share (and delete) it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    # Workers and the web process write concurrently: wait for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TZ", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # Browser libraries installed from npm at setup (package.json pins them); never committed.
    ("vendor/novnc", BASE_DIR / "node_modules" / "@novnc" / "novnc"),
    ("vendor/codemirror", BASE_DIR / "node_modules" / "codemirror"),
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# RudderVirt's own Redis (scripts/redis.sh): a socket only root may open, and a password.
# REDIS_URL carries no password; it comes from REDIS_PASSWORD or var/redis-password.
REDIS_URL = os.environ.get("REDIS_URL", redisconf.default_url(VAR_DIR))
REDIS_PASSWORD = redisconf.password(VAR_DIR, os.environ)

RQ_QUEUES = {
    name: {"URL": redisconf.with_password(REDIS_URL, REDIS_PASSWORD), "DEFAULT_TIMEOUT": timeout}
    for name, timeout in (("builds", 6 * 3600), ("clones", 1800), ("default", 600))
}
# Tests and `--wait` commands run jobs in-process when asked; see builds.jobs.
RQ_SHOW_ADMIN_LINK = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels.layers.InMemoryChannelLayer",
    }
}

# --- Virtualization ---------------------------------------------------------------
RUDDERVIRT_LIBVIRT_URI = os.environ.get("RUDDERVIRT_LIBVIRT_URI", "qemu:///system")
# The hypervisor driver, by dotted path (ruddervirt.runtime.get_hypervisor calls it with the
# URI above and name_prefix=RUDDERVIRT_NAME_PREFIX); the libvirt driver unless told otherwise.
RUDDERVIRT_HYPERVISOR = os.environ.get(
    "RUDDERVIRT_HYPERVISOR", "ruddervirt.hypervisor.libvirt_driver.LibvirtHypervisor"
)
# `kvm` on production hosts; `qemu` (TCG) where nested KVM is broken, as on the test machines.
RUDDERVIRT_DOMAIN_TYPE = os.environ.get("RUDDERVIRT_DOMAIN_TYPE", "kvm")
if RUDDERVIRT_DOMAIN_TYPE not in {"kvm", "qemu"}:
    raise ValueError("RUDDERVIRT_DOMAIN_TYPE must be 'kvm' or 'qemu'")
# Every domain and network RudderVirt creates starts with this, so orphans can be found.
RUDDERVIRT_NAME_PREFIX = os.environ.get("RUDDERVIRT_NAME_PREFIX", "rv-")
# Images, template disks, build scratch space and caches. Every parent folder must be
# traversable by the user QEMU runs as (libvirt-qemu under qemu:///system).
RUDDERVIRT_STORAGE_ROOT = env_path("RUDDERVIRT_STORAGE_ROOT", VAR_DIR / "storage")
# When false, VPCs that ask for internet get an isolated network instead (test machines).
# Where their NAT uplinks end is RUDDERVIRT_UPLINK_NETNS, read by the gateways themselves
# (ruddervirt/hypervisor/gateway_nat.py: unset, the host; else that network namespace).
RUDDERVIRT_ALLOW_INTERNET = env_bool("RUDDERVIRT_ALLOW_INTERNET", True)
# Capacity check before a class launch: what the host keeps for itself, and what each clone
# is expected to use beyond its VMs' memory and its overlays' initial size.
RUDDERVIRT_HOST_MEMORY_RESERVE = int(os.environ.get("RUDDERVIRT_HOST_MEMORY_RESERVE", str(1 << 30)))
RUDDERVIRT_CLONE_MEMORY_OVERHEAD = int(
    os.environ.get("RUDDERVIRT_CLONE_MEMORY_OVERHEAD", str(64 << 20))
)
RUDDERVIRT_HOST_DISK_RESERVE = int(os.environ.get("RUDDERVIRT_HOST_DISK_RESERVE", str(2 << 30)))
RUDDERVIRT_CLONE_DISK_ALLOWANCE = int(
    os.environ.get("RUDDERVIRT_CLONE_DISK_ALLOWANCE", str(512 << 20))
)
# How often a running job stamps its heartbeat (jobs.runner); the reconcile calls a job on
# another host dead after 90 s without one.
RUDDERVIRT_HEARTBEAT_S = float(os.environ.get("RUDDERVIRT_HEARTBEAT_S", "15"))
# How long a failed build's disks are kept for inspection.
RUDDERVIRT_FAILED_BUILD_KEEP_S = int(os.environ.get("RUDDERVIRT_FAILED_BUILD_KEEP_S", "1800"))
# A build asked to keep its failed VM running for inspection (docs/builds.md#keeping-a-
# failed-vm): how long by default, and the most anyone may ask for (seconds).
RUDDERVIRT_FAILED_VM_KEEP_S = int(os.environ.get("RUDDERVIRT_FAILED_VM_KEEP_S", "1800"))
RUDDERVIRT_FAILED_VM_KEEP_MAX_S = int(os.environ.get("RUDDERVIRT_FAILED_VM_KEEP_MAX_S", "14400"))
# The step cache (docs/builds.md#step-cache): on or off for every build, the most its
# checkpoints may take on disk (bytes or Ki/Mi/Gi/Ti; 0: no cap) and how long a checkpoint
# nobody used is kept (seconds; 0: no limit). Least recently used go first, after each build.
RUDDERVIRT_STEP_CACHE = env_bool("RUDDERVIRT_STEP_CACHE", True)
RUDDERVIRT_STEP_CACHE_MAX_BYTES = env_bytes("RUDDERVIRT_STEP_CACHE_MAX_BYTES", "50Gi")
RUDDERVIRT_STEP_CACHE_MAX_AGE_S = int(os.environ.get("RUDDERVIRT_STEP_CACHE_MAX_AGE_S", "1209600"))
# bootCommand pace: the pause after each key sent to a console, and how long a key is held
# (0: the hypervisor's default). Installers under TCG on a busy host drop keys sent faster.
RUDDERVIRT_BOOT_KEY_INTERVAL_MS = int(os.environ.get("RUDDERVIRT_BOOT_KEY_INTERVAL_MS", "100"))
RUDDERVIRT_BOOT_KEY_HOLD_MS = int(os.environ.get("RUDDERVIRT_BOOT_KEY_HOLD_MS", "0"))

# --- Consoles (docs/security.md, "Who can see and do what") --------------------------
# An open console is closed after this long (seconds), and its user's access is checked
# again every RECHECK_S (removed from the class, clone gone, logged out, deactivated).
RUDDERVIRT_CONSOLE_MAX_SESSION_S = int(os.environ.get("RUDDERVIRT_CONSOLE_MAX_SESSION_S", "28800"))
RUDDERVIRT_CONSOLE_RECHECK_S = float(os.environ.get("RUDDERVIRT_CONSOLE_RECHECK_S", "30"))

# --- Downloads (docs/security.md, "Downloads and images") ----------------------------
# Folders `file://` sources may come from, colon-separated (default: none, file:// refused).
RUDDERVIRT_FILE_SOURCE_DIRS = parse_folders(os.environ.get("RUDDERVIRT_FILE_SOURCE_DIRS", ""))
# Networks (CIDRs, comma-separated) downloads may reach although loopback, private,
# link-local, CGNAT, ... (default: none; the test suite sets 127.0.0.0/8).
RUDDERVIRT_FETCH_ALLOW_NETS = parse_networks(os.environ.get("RUDDERVIRT_FETCH_ALLOW_NETS", ""))
# The most one download (source disk, ISO, file) may be: bytes, or with Ki/Mi/Gi/Ti.
RUDDERVIRT_MAX_DOWNLOAD_BYTES = env_bytes("RUDDERVIRT_MAX_DOWNLOAD_BYTES", "20Gi")

# --- Limits (docs/security.md) ------------------------------------------------------
# What one manifest may ask for; the defaults are ruddervirt.manifest.limits.Limits'.
RUDDERVIRT_MAX_VMS = int(os.environ.get("RUDDERVIRT_MAX_VMS", "20"))
RUDDERVIRT_MAX_VM_CPUS = int(os.environ.get("RUDDERVIRT_MAX_VM_CPUS", "16"))
RUDDERVIRT_MAX_VM_MEMORY = env_bytes("RUDDERVIRT_MAX_VM_MEMORY", "64Gi")
RUDDERVIRT_MAX_DISK_SIZE = env_bytes("RUDDERVIRT_MAX_DISK_SIZE", "500Gi")
RUDDERVIRT_MAX_DISKS_PER_VM = int(os.environ.get("RUDDERVIRT_MAX_DISKS_PER_VM", "8"))
RUDDERVIRT_MAX_ISOS_PER_VM = int(os.environ.get("RUDDERVIRT_MAX_ISOS_PER_VM", "4"))
RUDDERVIRT_MAX_PROVISIONERS_PER_VM = int(
    os.environ.get("RUDDERVIRT_MAX_PROVISIONERS_PER_VM", "100")
)
RUDDERVIRT_MAX_FILES = int(os.environ.get("RUDDERVIRT_MAX_FILES", "100"))
RUDDERVIRT_MAX_NETWORKS = int(os.environ.get("RUDDERVIRT_MAX_NETWORKS", "16"))
RUDDERVIRT_MAX_BOOT_COMMAND_CHARS = int(
    os.environ.get("RUDDERVIRT_MAX_BOOT_COMMAND_CHARS", "20000")
)
RUDDERVIRT_MAX_BUILD_TIMEOUT_S = int(os.environ.get("RUDDERVIRT_MAX_BUILD_TIMEOUT_S", "86400"))
RUDDERVIRT_MAX_ISO_CACHE_TTL_S = int(os.environ.get("RUDDERVIRT_MAX_ISO_CACHE_TTL_S", "2592000"))
# Builds: how many one person may have queued or running at once; the build log's size.
RUDDERVIRT_MAX_CONCURRENT_BUILDS = int(os.environ.get("RUDDERVIRT_MAX_CONCURRENT_BUILDS", "2"))
RUDDERVIRT_BUILD_LOG_MAX_LINES = int(os.environ.get("RUDDERVIRT_BUILD_LOG_MAX_LINES", "100000"))
RUDDERVIRT_BUILD_LOG_MAX_LINE_CHARS = int(
    os.environ.get("RUDDERVIRT_BUILD_LOG_MAX_LINE_CHARS", "8000")
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RUDDERVIRT_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # paramiko logs every refused attempt while a guest boots: noise, the build log
        # already says what the wait is doing.
        "paramiko": {"level": "WARNING"},
    },
}
