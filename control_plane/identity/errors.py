from common.errors import AppError, Conflict, InvalidInput, NotAuthenticated, NotFound, PermissionDenied


class InvalidLogin(NotAuthenticated):
    """Wrong email or password, or an inactive user: never told apart (no user enumeration)."""

    code = "invalid_login"


class TotpRequired(NotAuthenticated):
    code = "totp_required"
    title = "Authenticator code required"


class InvalidTotpCode(NotAuthenticated):
    code = "invalid_totp_code"


class LoginRateLimited(AppError):
    """Too many failed sign-ins for this email or from this address; ``extra['retry_after']`` in seconds."""

    code = "rate_limited"
    http_status = 429
    title = "Too many attempts"


class NotSignedIn(NotAuthenticated):
    code = "not_signed_in"


class TenantHeaderMissing(InvalidInput):
    code = "tenant_header_missing"


class TenantHeaderUnknown(InvalidInput):
    code = "tenant_header_unknown"


class NotAMember(PermissionDenied):
    code = "not_a_member"


class RoleNotGrantable(PermissionDenied):
    code = "role_not_grantable"


class UnknownRole(InvalidInput):
    code = "unknown_role"


class MembershipNotFound(NotFound):
    code = "member_not_found"


class LastOwner(Conflict):
    code = "last_owner"


class AlreadyMember(Conflict):
    code = "already_member"


class InvitationNotFound(NotFound):
    code = "invitation_not_found"


class InvitationNotPending(Conflict):
    """Revoked, used or expired: it can no longer be accepted or revoked."""

    code = "invitation_not_pending"


class PasswordRequired(InvalidInput):
    code = "password_required"


class WrongPassword(PermissionDenied):
    code = "wrong_password"


class TotpStateConflict(Conflict):
    code = "totp_state_conflict"
