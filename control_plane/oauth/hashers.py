"""How OAuth client secrets are hashed: HMAC-SHA256 with a salt (PBKDF2 with one iteration).

A client secret is 128 random characters (about 760 bits) that we generate: no guessing attack can reach it,
so key stretching adds no safety. Django's default for passwords (PBKDF2, a million iterations, about a
second of CPU here) would instead let anyone who knows a client_id burn a second of server CPU per token
request. Passwords never use this hasher: it is last in PASSWORD_HASHERS and only named by
OAUTH2_PROVIDER["CLIENT_SECRET_HASHER"].
"""

from __future__ import annotations

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class ClientSecretHasher(PBKDF2PasswordHasher):
    algorithm = "oauth_client_secret"
    iterations = 1
