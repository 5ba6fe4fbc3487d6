from common.errors import AppError


class EncryptionConfigurationError(AppError):
    code = "encryption_misconfigured"
    http_status = 500


class RotationInProgress(AppError):
    code = "key_rotation_in_progress"
    http_status = 409
