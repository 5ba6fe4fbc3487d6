"""Test settings: the same real Postgres and Redis, with Redis databases of their own."""

from control_plane.settings.base import *  # noqa: F401,F403
import hashlib
import os
import sys

from control_plane.settings.base import BASE_DIR, CHANNEL_LAYER_HOST, REDIS_URL, celery_task_queues, \
    redis_url_with_db
from control_plane.settings import env

# Tests use databases 10-11 of the same Redis, so a running demo's queues and streams are untouched.
CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", redis_url_with_db(REDIS_URL, 10))
CHANNEL_LAYER_REDIS_URL = env.string("CHANNEL_LAYER_REDIS_URL", redis_url_with_db(REDIS_URL, 11))
# Two checkouts testing at once on one machine (a developer's tree and CI's clone) share that Redis, and so do
# the suite's pytest-xdist workers (each on a test database of its own): names carry the checkout and the
# worker (PYTEST_XDIST_WORKER, which the processes a test starts inherit), so none runs another's tasks or
# hears its streams.
CHECKOUT_ID = hashlib.sha1(f"{BASE_DIR}:{os.environ.get('PYTEST_XDIST_WORKER', '')}".encode()).hexdigest()[:8]
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": CHANNEL_LAYERS["default"]["BACKEND"],  # noqa: F405 (base's layer)
        "CONFIG": {"hosts": [{**CHANNEL_LAYER_HOST, "address": CHANNEL_LAYER_REDIS_URL}], "capacity": 5000, "expiry": 60,
                   "prefix": f"asgi-{CHECKOUT_ID}"},
    }
}
CELERY_TASK_DEFAULT_QUEUE = f"agentplane-test-{CHECKOUT_ID}"
# The tiers' run queues carry the checkout too (a test with workers of its own may name others).
RUN_QUEUE_PREFIX = env.string("RUN_QUEUE_PREFIX", f"agentplane-test-{CHECKOUT_ID}-")
CELERY_TASK_QUEUES = celery_task_queues(CELERY_TASK_DEFAULT_QUEUE, RUN_QUEUE_PREFIX)
# The session's tenants (standard tier) make thousands of requests; the quota tests turn limits on.
TIER_LIMITS_ENABLED = env.boolean("TIER_LIMITS_ENABLED", False)
STREAM_KEY_PREFIX = f"agentplane-test-{CHECKOUT_ID}"
# Fast for tests (a test proves base's is Argon2id); OAuth client secrets keep their own hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "control_plane.oauth.hashers.ClientSecretHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Sign-in failure counters in a Redis database and under a prefix of their own.
LOGIN_RATE_LIMIT_REDIS_URL = env.string("LOGIN_RATE_LIMIT_REDIS_URL", redis_url_with_db(REDIS_URL, 12))
LOGIN_RATE_LIMIT_PREFIX = f"agentplane-test-{CHECKOUT_ID}:login-failures"
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405

# The tests' local MCP servers run with this interpreter.
MCP_STDIO_ALLOWED_COMMANDS = env.string_list("MCP_STDIO_ALLOWED_COMMANDS", [sys.executable])
# The tests' web servers for http_fetch listen on 127.0.0.1.
HTTP_FETCH_ALLOW_PRIVATE_NETWORKS = env.boolean("HTTP_FETCH_ALLOW_PRIVATE_NETWORKS", True)
MCP_ALLOW_PRIVATE_NETWORKS = env.boolean("MCP_ALLOW_PRIVATE_NETWORKS", True)

# Uploads of tests (and of the workers they start) in a folder of their own.
ATTACHMENT_STORAGE_ROOT = env.string("ATTACHMENT_STORAGE_ROOT", str(BASE_DIR / ".data" / "test-attachments"))
# The local model server's scenarios named vision-* take images, omni-* images and audio.
LLM_IMAGE_MODELS = env.string_list("LLM_IMAGE_MODELS", ["openai/vision-*", "openai/omni-*"])
LLM_AUDIO_MODELS = env.string_list("LLM_AUDIO_MODELS", ["openai/omni-*"])

# Failed authentications are counted in the tests' Redis database, under this checkout's names; the suite
# fails many authentications on purpose from one address, so only the limiter's own tests set low limits.
RATE_LIMIT_REDIS_URL = env.string("RATE_LIMIT_REDIS_URL", CHANNEL_LAYER_REDIS_URL)
RATE_LIMIT_KEY_PREFIX = f"agentplane-test-{CHECKOUT_ID}-ratelimit"
AUTH_RATE_LIMIT_PER_ADDRESS = env.string("AUTH_RATE_LIMIT_PER_ADDRESS", "100000/minute")
AUTH_RATE_LIMIT_PER_CREDENTIAL = env.string("AUTH_RATE_LIMIT_PER_CREDENTIAL", "100000/minute")
