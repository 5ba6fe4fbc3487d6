"""Test settings: the same real Postgres and Redis, with Redis databases of their own."""

from control_plane.settings.base import *  # noqa: F401,F403
from control_plane.settings.base import REDIS_URL, redis_url_with_db
from control_plane.settings import env

# Tests use databases 10-11 of the same Redis, so a running demo's queues and streams are untouched.
CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", redis_url_with_db(REDIS_URL, 10))
CHANNEL_LAYER_REDIS_URL = env.string("CHANNEL_LAYER_REDIS_URL", redis_url_with_db(REDIS_URL, 11))
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [CHANNEL_LAYER_REDIS_URL], "capacity": 5000, "expiry": 60},
    }
}
CELERY_TASK_DEFAULT_QUEUE = "agentplane-test"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
