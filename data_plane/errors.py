from common.errors import AppError, Conflict, InvalidInput, NotFound


class PingNotFound(NotFound):
    code = "ping_not_found"


class AgentNotFound(NotFound):
    code = "agent_not_found"


class AgentNameTaken(Conflict):
    code = "agent_name_taken"


class AgentArchived(Conflict):
    code = "agent_archived"


class AgentSpecInvalid(InvalidInput):
    code = "agent_spec_invalid"


class RunNotFound(NotFound):
    code = "run_not_found"


class CheckpointNotFound(NotFound):
    code = "checkpoint_not_found"


class ApprovalNotFound(NotFound):
    code = "approval_not_found"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class ApprovalNotPending(Conflict):
    code = "approval_not_pending"


class ApprovalArgumentsInvalid(InvalidInput):
    code = "approval_arguments_invalid"


class RunBusy(AppError):
    """The run changed while the request was handled (a worker committed a step): retry."""

    code = "run_busy"
    http_status = 409


class McpServerNotFound(NotFound):
    code = "mcp_server_not_found"


class McpServerNameTaken(Conflict):
    code = "mcp_server_name_taken"


class McpServerUnreachable(AppError):
    """Registering or refreshing: the server did not answer as an MCP server should."""

    code = "mcp_server_unreachable"
    http_status = 502
    title = "MCP server unreachable"


class ToolPermissionNotFound(NotFound):
    code = "tool_permission_not_found"


class UnknownMcpServer(InvalidInput):
    code = "unknown_mcp_server"


class MemoryNotFound(NotFound):
    code = "memory_not_found"


class AttachmentNotFound(NotFound):
    code = "attachment_not_found"


class AttachmentInvalid(InvalidInput):
    """An upload without a file, or an empty one."""

    code = "attachment_invalid"


class AttachmentTooLarge(AppError):
    code = "attachment_too_large"
    http_status = 413
    title = "Attachment too large"


class AttachmentTypeUnsupported(AppError):
    """A declared type we do not take, or bytes that are none of the types we take."""

    code = "attachment_type_unsupported"
    http_status = 415
    title = "Unsupported attachment type"


class AttachmentTypeMismatch(AppError):
    """The bytes are of another type than the one declared."""

    code = "attachment_type_mismatch"
    http_status = 415
    title = "Attachment type does not match its content"


class AttachmentNotSupportedByModel(InvalidInput):
    """A message carries a file a model of the agent's policy cannot be given (an image for a text-only model)."""

    code = "attachment_not_supported_by_model"


class ExperimentNotFound(NotFound):
    code = "experiment_not_found"


class ExperimentInvalid(InvalidInput):
    """An experiment's definition (variants, weights, overrides) cannot be used; ``errors`` says where."""

    code = "experiment_invalid"


class ExperimentNameTaken(Conflict):
    code = "experiment_name_taken"


class ExperimentAlreadyRunning(Conflict):
    """The agent already has a running experiment: stop or promote it first."""

    code = "experiment_already_running"


class ExperimentNotRunning(Conflict):
    code = "experiment_not_running"


class ExperimentAlreadyPromoted(Conflict):
    code = "experiment_already_promoted"


class RoutingPolicyNotFound(NotFound):
    code = "routing_policy_not_found"


class RoutingPolicyNameTaken(Conflict):
    code = "routing_policy_name_taken"


class RoutingPolicyInvalid(InvalidInput):
    code = "routing_policy_invalid"


class RoutingPolicyInUse(Conflict):
    """Deleting a policy that agents (their latest versions) name: they would have nothing to route with."""

    code = "routing_policy_in_use"


class RoutingPolicyMissing(Conflict):
    """A run of an agent whose version names a routing policy that no longer exists."""

    code = "routing_policy_missing"
