"""Django settings: every toggle is read from the environment here (README.md lists them)."""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from billing.plans import PLANS
from common.crypto import master_keys_parse
from control_plane.settings import env

BASE_DIR = env.BASE_DIR

# Third-party libraries we run must never phone home or block on a network fetch at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

DEBUG = env.boolean("DEBUG", False)
# local (default) or production; production refuses the development secrets below.
AGENTPLANE_ENV = env.string("AGENTPLANE_ENV", "local")
_DEV_SECRET = "dev-insecure-secret-key-change-me-0123456789abcdef"
SECRET_KEY = env.string("SECRET_KEY", _DEV_SECRET)
API_KEY_PEPPER = env.string("API_KEY_PEPPER", SECRET_KEY)
if AGENTPLANE_ENV == "production" and _DEV_SECRET in (SECRET_KEY, API_KEY_PEPPER):
    raise ImproperlyConfigured(
        "AGENTPLANE_ENV=production but SECRET_KEY or API_KEY_PEPPER is unset; set both to long random values."
    )
# The key of v1 sealed values (before envelope keys; still opened, see MASTER_KEYS below): 32 bytes, base64.
# Derived from SECRET_KEY when unset, which production refuses.
_secrets_key = env.string("SECRETS_KEY", "")
if AGENTPLANE_ENV == "production" and not _secrets_key:
    raise ImproperlyConfigured("AGENTPLANE_ENV=production but SECRETS_KEY is unset; set it to 32 random bytes "
                               "in base64 (python -c 'import os,base64;print(base64.b64encode(os.urandom(32)))').")
SECRETS_KEY = (base64.b64decode(_secrets_key) if _secrets_key
               else hashlib.sha256(b"agentplane secrets v1:" + SECRET_KEY.encode()).digest())
# Envelope encryption (docs/security-encryption.md): master keys wrap each tenant's data keys.
# MASTER_KEYS="id1:<base64 32 bytes>,id2:<base64 32 bytes>", MASTER_KEY_CURRENT=id2 (new wraps use it; the
# others only unwrap until `manage.py keys_rotate_master` has rewrapped everything). Unset locally: one master
# key "dev" derived like SECRETS_KEY, which production refuses.
_master_keys = env.string("MASTER_KEYS", "")
if AGENTPLANE_ENV == "production" and not _master_keys:
    raise ImproperlyConfigured("AGENTPLANE_ENV=production but MASTER_KEYS is unset; set it to <id>:<base64 of 32 "
                               "random bytes> (comma-separated for several) and MASTER_KEY_CURRENT to one id.")
MASTER_KEYS = _master_keys or "dev:" + base64.b64encode(
    hashlib.sha256(b"agentplane master key dev:" + SECRET_KEY.encode()).digest()).decode()
MASTER_KEY_CURRENT = env.string("MASTER_KEY_CURRENT", "" if _master_keys else "dev")
try:
    _master_key_ids = master_keys_parse(MASTER_KEYS)
except ValueError as exc:
    raise ImproperlyConfigured(f"{exc} Fix MASTER_KEYS.") from None
if MASTER_KEY_CURRENT not in _master_key_ids:
    raise ImproperlyConfigured(f"MASTER_KEY_CURRENT={MASTER_KEY_CURRENT!r} is not an id of MASTER_KEYS "
                               f"({', '.join(_master_key_ids)}); set it to the id new data keys are wrapped with.")
# How long a process keeps a tenant's unwrapped data keys and encryption policy (seconds; at most
# ENCRYPTION_CACHE_TENANTS tenants). A rotation waits this long before retiring a key version.
ENCRYPTION_CACHE_SECONDS = float(env.string("ENCRYPTION_CACHE_SECONDS", "60"))
ENCRYPTION_CACHE_TENANTS = env.integer("ENCRYPTION_CACHE_TENANTS", 1024)
# Local MCP servers (stdio) run on the workers: a registration's command line must start with one of these
# (comma-separated; an entry may fix arguments: "/opt/venv/bin/python -m mcp_server_time" allows that server,
# not the interpreter). Empty: tenants can register remote (HTTP) servers only.
MCP_STDIO_ALLOWED_COMMANDS = env.string_list("MCP_STDIO_ALLOWED_COMMANDS", [])
# The built-in http_fetch reaches public addresses only; true lets it reach private ones too (tests, on-prem).
HTTP_FETCH_ALLOW_PRIVATE_NETWORKS = env.boolean("HTTP_FETCH_ALLOW_PRIVATE_NETWORKS", False)
# Remote MCP servers must be public unless this is true (tests, on-prem): the platform connects to them.
MCP_ALLOW_PRIVATE_NETWORKS = env.boolean("MCP_ALLOW_PRIVATE_NETWORKS", False)
ALLOWED_HOSTS = env.string_list("ALLOWED_HOSTS", ["*"])

# --- Applications: each of ours lives in exactly one of the two lists. --------------------------
SHARED_APPS = [
    "django_tenants",
    "tenants",  # tenant registry, domains, the API-key index, operator keys
    "control_plane.identity",  # portal users' memberships in tenants, with their roles
    "control_plane.oauth",  # OAuth 2.0 clients of tenants and the keys that sign their access tokens
    "oauth2_provider",  # django-oauth-toolkit: grants, access and refresh tokens (the Application is ours)
    "django.contrib.sessions",  # portal users' sign-in (identity), which the OAuth authorize page needs
    "billing",
    "control_plane.audit_anchor",  # each tenant's audit chain head, outside the tenant's schema
    "control_plane.encryption",  # tenants' data keys (wrapped) and encryption policy
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
]
TENANT_APPS = [
    "control_plane.audit",
    "data_plane",
    "guardrails",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_NAME = "public"
SHOW_PUBLIC_IF_NO_TENANT_FOUND = True

MIDDLEWARE = [
    "tenants.middleware.TenantResolutionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Portal users' sessions (lazy: a request with an API key never loads one); the API's views are exempt
    # from the CSRF middleware, and a session on the API is checked by identity.authentication instead.
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "control_plane.urls"
WSGI_APPLICATION = "control_plane.wsgi.application"
ASGI_APPLICATION = "control_plane.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# --- Postgres (django-tenants backend; one schema per tenant) -----------------------------------
DATABASE_URL = env.string("DATABASE_URL", "postgres://postgres@127.0.0.1:54329/agentplane")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        engine="tenants.postgresql_backend",
        conn_max_age=env.integer("DATABASE_CONN_MAX_AGE", 60),
        # No ping before each reuse: a connection that broke is closed after its first error (the step that
        # hit it is retried as transient) instead of every request or task paying a round trip.
        conn_health_checks=False,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env.integer("DATABASE_CONNECT_TIMEOUT", 5)
# Server-side binding with prepared statements: the per-step statements are parsed and planned once per
# connection. Behind PgBouncer in transaction mode this needs PgBouncer >= 1.21 (max_prepared_statements);
# set DATABASE_PREPARED_STATEMENTS=false for an older one.
if env.boolean("DATABASE_PREPARED_STATEMENTS", True):
    DATABASES["default"]["OPTIONS"].update(server_side_binding=True, prepare_threshold=2)
# django-tenants sets search_path only when the schema changes, not before every query.
TENANT_LIMIT_SET_CALLS = True
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
# Defence in depth (docs/security-isolation.md): in a tenant's schema the connection is that tenant's Postgres
# role, in public the public role, so SQL naming another tenant's schema fails. Needs a login with CREATEROLE
# that owns the schemas; false for a deployment without it. migrate_schemas runs as the owner and grants.
DATABASE_TENANT_ROLES = env.boolean("DATABASE_TENANT_ROLES", True)
GET_EXECUTOR_FUNCTION = "tenants.db_roles.migration_executor"
# In a tenant's schema the shared apps' migrations are recorded, not rendered (they change nothing there); true
# renders them as Django would (slower; the tests compare the two schemas).
TENANT_MIGRATIONS_RENDER_SHARED_APPS = env.boolean("TENANT_MIGRATIONS_RENDER_SHARED_APPS", False)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# --- Redis: Celery broker and the Channels layer use separate logical databases. ----------------
def redis_url_with_db(url: str, db: int) -> str:
    """The same server as ``url`` with its path set to database ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


REDIS_URL = env.string("REDIS_URL", "redis://127.0.0.1:6379/0")
_redis_base_db = int(urlsplit(REDIS_URL).path.strip("/") or 0)
CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", redis_url_with_db(REDIS_URL, _redis_base_db))
CHANNEL_LAYER_REDIS_URL = env.string("CHANNEL_LAYER_REDIS_URL", redis_url_with_db(REDIS_URL, _redis_base_db + 1))

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A task whose worker died unacknowledged goes back to the queue after the visibility timeout (found by a
# sweep every unacked_restore_interval seconds). Run steps are safe to redeliver early: the run's lease
# and version keep a second delivery from running a step twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.integer("CELERY_VISIBILITY_TIMEOUT", 120),
    "unacked_restore_interval": env.integer("CELERY_UNACKED_RESTORE_INTERVAL", 10),
    "unacked_restore_throttle": 1,
}
CELERY_TASK_ALWAYS_EAGER = env.boolean("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "agentplane"
# Celery's Django fixup closes the database connection around every task unless this is set: reuse it.
CELERY_DB_REUSE_MAX = env.integer("CELERY_DB_REUSE_MAX", 1000)
# Periodic work (run `celery -A control_plane beat` once per deployment).
CELERY_BEAT_SCHEDULE = {
    "checkpoints-retention": {"task": "data_plane.tasks.checkpoints_prune_all_task", "schedule": 24 * 3600.0},
    "memories-expiry": {"task": "data_plane.tasks.memories_expire_all_task", "schedule": 3600.0},
    # Metering (docs/metering.md): usage records collected every minute (each collection also recomputes the
    # rollups of the hours and days it added to), and the current and previous hour and day recomputed every 5.
    "usage-collect": {"task": "billing.tasks.usage_collect_all_task", "schedule": 60.0},
    "usage-rollup": {"task": "billing.tasks.usage_rollup_all_task", "schedule": 300.0},
}

# Redis connections a process's channel layer may hold at once. redis-py refuses the next one outright (it
# does not wait), and a burst of subscribers connecting to one Daphne each needs one for its group_add.
CHANNEL_LAYER_MAX_CONNECTIONS = env.integer("CHANNEL_LAYER_MAX_CONNECTIONS", 2000)
# Seconds a read from the channel layer's Redis may take. channels_redis receives with a blocking pop of 5 s;
# redis-py 8 reads with a 5 s socket timeout by default, so a channel quiet for 5 s raised TimeoutError
# (a Channels consumer died of it; the hub logged and retried). Longer than the pop, shorter than forever.
CHANNEL_LAYER_SOCKET_TIMEOUT = env.integer("CHANNEL_LAYER_SOCKET_TIMEOUT", 15)
CHANNEL_LAYER_HOST = {"address": CHANNEL_LAYER_REDIS_URL, "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                      "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT}
CHANNEL_LAYERS = {
    "default": {
        # channels_redis's layer, with a group send in one or two round trips (common/channel_layer.py)
        "BACKEND": "common.channel_layer.FastGroupRedisChannelLayer",
        # Token streams burst far past the default capacity of 100 messages per channel.
        "CONFIG": {"hosts": [CHANNEL_LAYER_HOST], "capacity": 5000, "expiry": 60},
    }
}

# --- The agent runtime ---------------------------------------------------------------------------
# The model gateway (litellm). Locally it talks to our scripted OpenAI-compatible model server
# (`python -m data_plane.model_server`); for a real provider set LLM_API_BASE empty, LLM_API_KEY to the
# provider's key and use its model names (e.g. openai/gpt-4o-mini) in agent specs.
LLM_API_BASE = env.string("LLM_API_BASE", "http://127.0.0.1:8011/v1")
LLM_API_KEY = env.string("LLM_API_KEY", "local-model-server")
LLM_MAX_RETRIES = env.integer("LLM_MAX_RETRIES", 3)
# Model names to price like gpt-4o-mini (for the local scripted models, so costs show up in demos).
LLM_LOCAL_PRICES = env.string_list("LLM_LOCAL_PRICES", [])
# Budgets (docs/budgets.md): the output tokens assumed for a call whose request and model set no cap, and how
# long an LLM call's hold lasts before a sweep releases it (its worker died mid-call; longer than any call).
BUDGET_DEFAULT_OUTPUT_TOKENS = env.integer("BUDGET_DEFAULT_OUTPUT_TOKENS", 4096)
BUDGET_HOLD_SECONDS = env.integer("BUDGET_HOLD_SECONDS", 900)
CELERY_BEAT_SCHEDULE["budget-holds-expiry"] = {"task": "billing.tasks.spend_reservations_expire_task",
                                               "schedule": 60.0}
# A worker holds a run's lease this long without renewing it before another worker may take over.
RUN_LEASE_SECONDS = float(env.integer("RUN_LEASE_SECONDS", 30))
RUN_STEP_MAX_TRANSIENT_RETRIES = env.integer("RUN_STEP_MAX_TRANSIENT_RETRIES", 8)
# A task runs up to this many steps of a run back to back (each committed before the next) before it
# hands the run back to the queue: fewer claims and queue hops, and still fair to other runs.
RUN_STEPS_PER_TASK = env.integer("RUN_STEPS_PER_TASK", 8)
# Run steps go to their tenant's tier's queue (billing/plans.py: runs.standard, runs.professional,
# runs.enterprise), named with this prefix, so a burst of one tier cannot delay another's runs
# (docs/quotas.md). RUN_STEP_QUEUE, when set, overrides it: every tier's steps go to that one queue.
RUN_QUEUE_PREFIX = env.string("RUN_QUEUE_PREFIX", "")
RUN_STEP_QUEUE = env.string("RUN_STEP_QUEUE", "")


def celery_task_queues(default_queue: str, run_queue_prefix: str) -> list[Queue]:
    """The queues a worker started without -Q consumes: the default queue and every tier's run queue (a
    dedicated worker per tier takes -Q <prefix>runs.<tier>)."""
    names = [default_queue, *(f"{run_queue_prefix}{plan.queue}" for plan in PLANS.values())]
    return [Queue(name, routing_key=name) for name in names]


CELERY_TASK_QUEUES = celery_task_queues(CELERY_TASK_DEFAULT_QUEUE, RUN_QUEUE_PREFIX)
# Tenants' API request rates, runs per minute and runs at once, per tier (billing/quotas.py). Off only in
# the test settings, whose session tenants make thousands of requests; the quota tests turn them on.
TIER_LIMITS_ENABLED = env.boolean("TIER_LIMITS_ENABLED", True)
# Redis keys of the streams (runs' token-delta logs), in the channel layer's database.
STREAM_KEY_PREFIX = env.string("STREAM_KEY_PREFIX", "agentplane")

# --- Long-term memory ----------------------------------------------------------------------------------
# HNSW search breadth (pgvector's hnsw.ef_search) and how many index tuples a filtered (iterative) scan
# may visit before it gives up: recall against latency, measured by bench/memory_bench.py.
MEMORY_HNSW_EF_SEARCH = env.integer("MEMORY_HNSW_EF_SEARCH", 160)
MEMORY_HNSW_MAX_SCAN_TUPLES = env.integer("MEMORY_HNSW_MAX_SCAN_TUPLES", 20000)
# The Celery queue of learning from finished runs (facts, lessons; empty: the default queue).
LEARN_QUEUE = env.string("LEARN_QUEUE", "")
# A new memory this close (cosine distance) to one of the same scope is merged into it, not added.
MEMORY_NEAR_DUPLICATE_DISTANCE = float(env.string("MEMORY_NEAR_DUPLICATE_DISTANCE", "0.08"))
# --- Attachments: images and audio in runs' messages (docs/attachments.md) -----------------------
# Where uploads are kept: "local" (a folder; an S3-compatible store would be another value here).
ATTACHMENT_STORAGE = env.string("ATTACHMENT_STORAGE", "local")
if ATTACHMENT_STORAGE != "local":
    raise ImproperlyConfigured(f"ATTACHMENT_STORAGE={ATTACHMENT_STORAGE!r} is not supported; set it to 'local' "
                               "(and ATTACHMENT_STORAGE_ROOT to a folder every web and worker process shares).")
ATTACHMENT_STORAGE_ROOT = env.string("ATTACHMENT_STORAGE_ROOT", str(BASE_DIR / ".data" / "attachments"))
ATTACHMENT_MAX_IMAGE_BYTES = env.integer("ATTACHMENT_MAX_IMAGE_BYTES", 10 * 1024 * 1024)
ATTACHMENT_MAX_AUDIO_BYTES = env.integer("ATTACHMENT_MAX_AUDIO_BYTES", 25 * 1024 * 1024)
# Models that take images / audio besides those litellm's model map knows (fnmatch patterns, comma-separated):
# for local or self-hosted models, like the local model server's openai/<scenario>.
LLM_IMAGE_MODELS = env.string_list("LLM_IMAGE_MODELS", [])
LLM_AUDIO_MODELS = env.string_list("LLM_AUDIO_MODELS", [])
# Audio for a model that cannot take it is transcribed with this model (through litellm); empty: refused.
LLM_TRANSCRIPTION_MODEL = env.string("LLM_TRANSCRIPTION_MODEL", "openai/whisper-1")

# --- Portal users: passwords, sessions, sign-in limits, invitations (docs/security-identity.md) ---------
# Argon2id first: new and changed passwords use it; older hashes still verify and are upgraded at sign-in.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "control_plane.oauth.hashers.ClientSecretHasher",  # OAuth client secrets only (see that module)
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
     "OPTIONS": {"min_length": env.integer("PASSWORD_MIN_LENGTH", 12)}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = env.string("LOGIN_REDIRECT_URL", "/accounts/signed-in/")
SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_COOKIE_AGE = env.integer("SESSION_COOKIE_AGE", 12 * 3600)
# Cookie flags (HttpOnly, SameSite, Secure over TLS) are set with the transport settings below.
CSRF_TRUSTED_ORIGINS = env.string_list("CSRF_TRUSTED_ORIGINS", [])
# Failed sign-ins per email and per client address within the window, then 429 with Retry-After.
LOGIN_MAX_FAILURES_PER_EMAIL = env.integer("LOGIN_MAX_FAILURES_PER_EMAIL", 5)
LOGIN_MAX_FAILURES_PER_ADDRESS = env.integer("LOGIN_MAX_FAILURES_PER_ADDRESS", 50)
LOGIN_FAILURE_WINDOW_SECONDS = env.integer("LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60)
LOGIN_RATE_LIMIT_REDIS_URL = env.string("LOGIN_RATE_LIMIT_REDIS_URL", REDIS_URL)
LOGIN_RATE_LIMIT_PREFIX = env.string("LOGIN_RATE_LIMIT_PREFIX", "agentplane:login-failures")
# Invitations are emailed with a link to this page (+ ?token=...).
INVITATION_ACCEPT_URL = env.string("INVITATION_ACCEPT_URL", "http://localhost:8000/accounts/invitations/accept/")
EMAIL_BACKEND = env.string("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.string("DEFAULT_FROM_EMAIL", "Agentplane <no-reply@agentplane.dev>")
EMAIL_HOST = env.string("EMAIL_HOST", "localhost")
EMAIL_PORT = env.integer("EMAIL_PORT", 25)
EMAIL_HOST_USER = env.string("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env.string("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env.boolean("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env.integer("EMAIL_TIMEOUT", 10)
# --- OAuth 2.0 authorization server (docs/security-oauth.md) ------------------------------------
# An unsigned-in user is sent by /oauth/authorize to LOGIN_URL (the portal's sign-in page, above).
# The issuer (iss) of our access tokens and of /.well-known/oauth-authorization-server: this server's public
# URL. The audience (aud) is the API the tokens are for.
OAUTH_ISSUER = env.string("OAUTH_ISSUER", "http://localhost:8000")
OAUTH_AUDIENCE = env.string("OAUTH_AUDIENCE", "agentplane-api")
# Access tokens are signed JWTs this short-lived; refresh tokens live this long after their access token.
OAUTH_ACCESS_TOKEN_TTL_SECONDS = env.integer("OAUTH_ACCESS_TOKEN_TTL_SECONDS", 600)
OAUTH_REFRESH_TOKEN_TTL_SECONDS = env.integer("OAUTH_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600)
# Clock skew tolerated when checking a token's exp and iat.
OAUTH_LEEWAY_SECONDS = env.integer("OAUTH_LEEWAY_SECONDS", 10)
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth.Application"
OAUTH2_PROVIDER = {
    "OAUTH2_VALIDATOR_CLASS": "control_plane.oauth.validators.TenantOAuth2Validator",
    "SCOPES_BACKEND_CLASS": "control_plane.oauth.scopes.TenantScopes",
    "ACCESS_TOKEN_GENERATOR": "control_plane.oauth.tokens.access_token_generate",
    # Refresh tokens stay opaque random strings (DOT would use the access token generator for them too).
    "REFRESH_TOKEN_GENERATOR": "oauthlib.oauth2.rfc6749.tokens.random_token_generator",
    "ACCESS_TOKEN_EXPIRE_SECONDS": OAUTH_ACCESS_TOKEN_TTL_SECONDS,
    "REFRESH_TOKEN_EXPIRE_SECONDS": OAUTH_REFRESH_TOKEN_TTL_SECONDS,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,  # a rotated-out refresh token presented again revokes its family
    "PKCE_REQUIRED": True,
    "CLIENT_SECRET_HASHER": "oauth_client_secret",  # control_plane.oauth.hashers: no stretching for random secrets
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https", "http"],  # http only to loopback (control_plane.oauth.services)
    "OIDC_ISS_ENDPOINT": OAUTH_ISSUER,
    "OAUTH2_GRANT_TYPES_SUPPORTED": ["authorization_code", "client_credentials", "refresh_token"],
    "OAUTH2_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OAUTH2_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": ["client_secret_basic", "client_secret_post", "none"],
    # RFC 9700 (OAuth 2.0 Security BCP), enforced: S256 only, no implicit or password grant, tokens stored
    # only as SHA-256 checksums, no access token in a query string, iss in the authorization response.
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "COMPLIANT_BCP_RFC9700_PKCE_REQUIRED": True,
}
CELERY_BEAT_SCHEDULE["oauth-expired-tokens"] = {"task": "control_plane.oauth.tasks.oauth_tokens_clear_expired_task",
                                                "schedule": 3600.0}

# --- Stripe billing (docs/billing-stripe.md) ------------------------------------------------------
# Off by default: no customer is created, no usage reported, the webhook endpoint answers 404. When on, every
# value below without a default must be set (the check after them names the missing one).
STRIPE_ENABLED = env.boolean("STRIPE_ENABLED", False)
STRIPE_API_KEY = env.string("STRIPE_API_KEY", "")
STRIPE_API_BASE = env.string("STRIPE_API_BASE", "https://api.stripe.com")
STRIPE_WEBHOOK_SECRET = env.string("STRIPE_WEBHOOK_SECRET", "")  # the endpoint's signing secret, whsec_...
# Each tier's two prices at Stripe: the monthly fee (licensed) and the LLM tokens (metered, on the meter below).
STRIPE_PRICE_IDS = {tier: env.string(f"STRIPE_PRICE_{tier.upper()}", "")
                    for tier in ("standard", "professional", "enterprise")}
STRIPE_USAGE_PRICE_IDS = {tier: env.string(f"STRIPE_USAGE_PRICE_{tier.upper()}", "")
                          for tier in ("standard", "professional", "enterprise")}
STRIPE_METER_EVENT_NAME = env.string("STRIPE_METER_EVENT_NAME", "agentplane_llm_tokens")
STRIPE_TIMEOUT_SECONDS = float(env.string("STRIPE_TIMEOUT_SECONDS", "10"))
STRIPE_CONNECT_TIMEOUT_SECONDS = float(env.string("STRIPE_CONNECT_TIMEOUT_SECONDS", "3"))
STRIPE_MAX_NETWORK_RETRIES = env.integer("STRIPE_MAX_NETWORK_RETRIES", 2)
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.integer("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)
# A failed payment leaves the tenant this many days to pay before it is suspended.
BILLING_GRACE_DAYS = env.integer("BILLING_GRACE_DAYS", 7)
# An hour's usage is reported once it has been closed this long (late usage records land first).
BILLING_USAGE_SETTLE_MINUTES = env.integer("BILLING_USAGE_SETTLE_MINUTES", 15)
if STRIPE_ENABLED:
    _stripe_required = {"STRIPE_API_KEY": STRIPE_API_KEY, "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
                        "STRIPE_API_BASE": STRIPE_API_BASE, "STRIPE_METER_EVENT_NAME": STRIPE_METER_EVENT_NAME,
                        **{f"STRIPE_PRICE_{tier.upper()}": price for tier, price in STRIPE_PRICE_IDS.items()},
                        **{f"STRIPE_USAGE_PRICE_{tier.upper()}": price for tier, price in STRIPE_USAGE_PRICE_IDS.items()}}
    for _name, _value in _stripe_required.items():
        if not _value:
            raise ImproperlyConfigured(f"STRIPE_ENABLED=true but {_name} is unset; set it or set STRIPE_ENABLED=false.")
CELERY_IMPORTS = ["billing.stripe_tasks"]
CELERY_BEAT_SCHEDULE["billing-usage-report"] = {"task": "billing.stripe_tasks.usage_report_all_task",
                                                "schedule": 15 * 60.0}
CELERY_BEAT_SCHEDULE["billing-grace-expiry"] = {"task": "billing.stripe_tasks.billing_grace_expire_task",
                                                "schedule": 15 * 60.0}

# --- REST framework and the OpenAPI schema ------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["common.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "common.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "common.problems.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Agentplane API",
    "DESCRIPTION": (
        "Multi-tenant platform for durable AI agents. Authenticate with `Authorization: Bearer <API key>`; "
        "the key selects your tenant. Platform-operator endpoints under /v1/platform take an operator key. "
        "Errors are RFC 9457 problem documents."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/v1",
    "ENUM_NAME_OVERRIDES": {"MemberRoleEnum": "tenants.roles.ROLES"},
    # A <slug:...> in a path takes only these characters; anything else is a 404 before the view.
    "PATH_CONVERTER_OVERRIDES": {"slug": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"}},
    # Errors are documented too: every operation's problem documents (common/openapi.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "common.openapi.document_problem_responses"],
}

STATIC_URL = "/static/"
# Set STATIC_ROOT (and run collectstatic) in production; locally WhiteNoise serves from the packages.
STATIC_ROOT = env.string("STATIC_ROOT", "") or None
# The API reference's assets (Swagger UI, Redoc) are served by WhiteNoise from the installed packages,
# so the page works without a CDN or a collectstatic step.
WHITENOISE_USE_FINDERS = env.boolean("WHITENOISE_USE_FINDERS", True)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Largest JSON body the API accepts (bytes); larger bodies get a 413 problem document.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.integer("MAX_REQUEST_BYTES", 2 * 1024 * 1024)

LOG_LEVEL = env.string("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # httpx and httpx2 (the MCP SDK's client) log every request at INFO: one line per model or tool call.
    "loggers": {"django.db.backends": {"level": "INFO"}, "httpx": {"level": "WARNING"},
                "httpx2": {"level": "WARNING"}},
}

# --- Transport and request hardening (docs/security-transport.md) ---------------------------------------
# TLS served by `python -m control_plane.serve` (TLS 1.3 only): a PEM certificate chain and its key.
TLS_CERT_FILE = env.string("TLS_CERT_FILE", "")
TLS_KEY_FILE = env.string("TLS_KEY_FILE", "")
if bool(TLS_CERT_FILE) != bool(TLS_KEY_FILE):
    raise ImproperlyConfigured("Set both TLS_CERT_FILE and TLS_KEY_FILE (PEM files) to serve TLS, or neither.")
# Behind a TLS-terminating proxy: trust its X-Forwarded-Proto (only if the proxy always sets or strips it).
TRUST_X_FORWARDED_PROTO = env.boolean("TRUST_X_FORWARDED_PROTO", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUST_X_FORWARDED_PROTO else None
_served_over_tls = bool(TLS_CERT_FILE) or TRUST_X_FORWARDED_PROTO or AGENTPLANE_ENV == "production"
SECURE_SSL_REDIRECT = env.boolean("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # probes speak plain HTTP inside the cluster
SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 31536000 if _served_over_tls else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env.boolean("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.boolean("SECURE_COOKIES", _served_over_tls)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "no-referrer"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Request bodies: MAX_REQUEST_BYTES (above) for the JSON API; uploads (POST /v1/attachments) may carry the
# largest attachment plus the multipart envelope.
MAX_UPLOAD_REQUEST_BYTES = env.integer(
    "MAX_UPLOAD_REQUEST_BYTES", max(ATTACHMENT_MAX_IMAGE_BYTES, ATTACHMENT_MAX_AUDIO_BYTES) + 1024 * 1024)
# The largest websocket message a client may send (a run's control messages); larger: error frame, close 4413.
WEBSOCKET_MAX_MESSAGE_BYTES = env.integer("WEBSOCKET_MAX_MESSAGE_BYTES", 1024 * 1024)
# Failed authentications allowed per client address and per presented key id (limits' syntax: N/second,
# N/minute, N/hour, "N per 5 minutes"), counted in Redis; past them 429 with Retry-After.
AUTH_RATE_LIMIT_PER_ADDRESS = env.string("AUTH_RATE_LIMIT_PER_ADDRESS", "30/minute")
AUTH_RATE_LIMIT_PER_CREDENTIAL = env.string("AUTH_RATE_LIMIT_PER_CREDENTIAL", "10/minute")
RATE_LIMIT_REDIS_URL = env.string("RATE_LIMIT_REDIS_URL", CHANNEL_LAYER_REDIS_URL)
RATE_LIMIT_KEY_PREFIX = env.string("RATE_LIMIT_KEY_PREFIX", "agentplane-ratelimit")
# No secrets in logs: every record is redacted (keys, tokens, passwords) whatever handler gets it, and every
# handler of ours filters too; error reports hide credentials.
LOGGING_CONFIG = "common.log_redaction.configure_logging"
DEFAULT_EXCEPTION_REPORTER = "common.log_redaction.SecretSafeExceptionReporter"
DEFAULT_EXCEPTION_REPORTER_FILTER = "common.log_redaction.SecretSafeExceptionReporterFilter"
LOGGING["filters"] = {"redact_secrets": {"()": "common.log_redaction.SecretRedactingFilter"}}
LOGGING["handlers"]["console"]["filters"] = ["redact_secrets"]
LOGGING["loggers"]["daphne.access"] = {"level": env.string("ACCESS_LOG_LEVEL", "INFO")}
# Django's own default handlers (mail_admins, a DEBUG console) would bypass the filter: django logs go to ours.
LOGGING["loggers"].update({"django": {"handlers": [], "propagate": True},
                           "django.server": {"handlers": [], "propagate": True}})

# --- Finance reports (docs/metering.md) ------------------------------------------------------------
# The month's infrastructure cost in USD (compute, database, storage, network: the requirements' cost section
# puts it at ~$150K/month at scale), allocated to tenants per day in proportion to their LLM calls.
FINANCE_INFRASTRUCTURE_USD_PER_MONTH = env.string("FINANCE_INFRASTRUCTURE_USD_PER_MONTH", "150000")
try:
    from decimal import Decimal as _Decimal, InvalidOperation as _InvalidOperation

    if _Decimal(FINANCE_INFRASTRUCTURE_USD_PER_MONTH) < 0:
        raise _InvalidOperation
except _InvalidOperation:
    raise ImproperlyConfigured(f"FINANCE_INFRASTRUCTURE_USD_PER_MONTH={FINANCE_INFRASTRUCTURE_USD_PER_MONTH!r} is "
                               "not an amount of USD; set it to a number such as 150000.") from None
