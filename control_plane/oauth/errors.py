from common.errors import InvalidInput, NotFound


class ApplicationNotFound(NotFound):
    code = "oauth_application_not_found"


class ApplicationInvalid(InvalidInput):
    code = "oauth_application_invalid"
