from common.errors import AppError, Conflict, InvalidInput, NotAuthenticated, NotFound, PermissionDenied


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class TenantSlugTaken(Conflict):
    code = "tenant_slug_taken"


class DomainTaken(Conflict):
    code = "domain_taken"


class TenantStatusConflict(Conflict):
    code = "tenant_status_conflict"


class TenantSuspended(PermissionDenied):
    code = "tenant_suspended"
    title = "Tenant suspended"


class TenantNotActive(AppError):
    """A task or call was addressed to a tenant that is suspended or deleted."""

    code = "tenant_not_active"
    http_status = 409


class InvalidCredentials(NotAuthenticated):
    code = "invalid_credentials"


class CredentialExpired(NotAuthenticated):
    code = "credential_expired"


class CredentialRevoked(NotAuthenticated):
    code = "credential_revoked"


class CredentialTenantMismatch(PermissionDenied):
    code = "credential_tenant_mismatch"


class MissingScope(PermissionDenied):
    code = "missing_scope"


class ScopeEscalation(PermissionDenied):
    code = "scope_escalation"


class UnknownScope(InvalidInput):
    code = "unknown_scope"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class ApiKeyAlreadyRevoked(Conflict):
    code = "api_key_already_revoked"


class ProvisioningFailed(AppError):
    code = "provisioning_failed"
    http_status = 500
    title = "Provisioning failed"
