"""The transport hardening's configuration, read from settings once per process (docs/security-transport.md)."""

from __future__ import annotations

from django.conf import settings

from common.http_hardening import BodyLimits, SecurityHeaderSettings

UPLOAD_PATHS = ("/v1/attachments",)  # multipart uploads: MAX_UPLOAD_REQUEST_BYTES instead of MAX_REQUEST_BYTES


def body_limits() -> BodyLimits:
    return BodyLimits(default=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
                      by_path={path: settings.MAX_UPLOAD_REQUEST_BYTES for path in UPLOAD_PATHS})


def security_header_settings() -> SecurityHeaderSettings:
    return SecurityHeaderSettings(hsts_seconds=settings.SECURE_HSTS_SECONDS,
                                  hsts_include_subdomains=settings.SECURE_HSTS_INCLUDE_SUBDOMAINS,
                                  hsts_preload=settings.SECURE_HSTS_PRELOAD,
                                  trust_forwarded_proto=settings.TRUST_X_FORWARDED_PROTO,
                                  referrer_policy=settings.SECURE_REFERRER_POLICY,
                                  static_prefix=settings.STATIC_URL)
