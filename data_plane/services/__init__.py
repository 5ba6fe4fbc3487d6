"""Writes of the data plane, by topic. Import the package: ``from data_plane import services``."""

from data_plane.services.agents import agent_archive, agent_create, agent_update
from data_plane.services.experiments import experiment_create, experiment_promote, experiment_stop
from data_plane.services.learning import run_feedback_create, run_learn
from data_plane.services.memory import (
    MemoryDraft,
    memories_expire,
    memories_reembed,
    memory_delete,
    memory_draft,
    memory_forget,
    memory_remember,
    memory_settings_update,
)
from data_plane.services.attachments import attachment_delete, attachment_request_check, attachment_upload
from data_plane.services.pings import ping_answer, ping_create
from data_plane.services.tools import (
    mcp_server_archive,
    mcp_server_refresh,
    mcp_server_register,
    tool_permission_delete,
    tool_permission_set,
    tool_settings_update,
)
from data_plane.services.routing import (
    routing_policy_create,
    routing_policy_delete,
    routing_policy_update,
    run_routing_resolve,
)
from data_plane.services.runs import (
    approval_decide,
    checkpoints_prune,
    run_cancel,
    run_create_child,
    run_fork,
    run_message_send,
    run_pause,
    run_resume,
    run_retry,
    run_start,
    run_step,
    run_step_fail,
)

__all__ = [
    "MemoryDraft", "memories_expire", "memories_reembed", "memory_delete", "memory_draft", "memory_forget",
    "memory_remember", "memory_settings_update", "run_feedback_create", "run_learn",
    "attachment_delete", "attachment_request_check", "attachment_upload",
    "mcp_server_archive", "mcp_server_refresh", "mcp_server_register", "tool_permission_delete",
    "tool_permission_set", "tool_settings_update",
    "experiment_create", "experiment_promote", "experiment_stop",
    "agent_archive", "agent_create", "agent_update", "approval_decide", "checkpoints_prune", "ping_answer", "ping_create", "run_cancel",
    "run_create_child", "run_fork", "run_message_send", "run_pause", "run_resume", "run_retry", "run_start", "run_step",
    "run_step_fail", "routing_policy_create", "routing_policy_delete", "routing_policy_update", "run_routing_resolve",
]
