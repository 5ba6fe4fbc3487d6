from common.errors import NotFound


class PingNotFound(NotFound):
    code = "ping_not_found"
