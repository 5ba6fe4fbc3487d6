from django.urls import path

from data_plane import apis, experiment_apis, memory_apis, routing_apis, sse

urlpatterns = [
    path("pings", apis.PingListCreateApi.as_view(), name="pings"),
    path("pings/<uuid:ping_id>", apis.PingDetailApi.as_view(), name="ping-detail"),
    # attachments
    path("attachments", apis.AttachmentListCreateApi.as_view(), name="attachments"),
    path("attachments/<uuid:attachment_id>", apis.AttachmentDetailApi.as_view(), name="attachment-detail"),
    path("attachments/<uuid:attachment_id>/content", apis.AttachmentContentApi.as_view(), name="attachment-content"),
    # agents
    path("agents", apis.AgentListCreateApi.as_view(), name="agents"),
    path("agents/<uuid:agent_id>", apis.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<uuid:agent_id>/archive", apis.AgentArchiveApi.as_view(), name="agent-archive"),
    path("agents/<uuid:agent_id>/versions", apis.AgentVersionListApi.as_view(), name="agent-versions"),
    path("agents/<uuid:agent_id>/versions/<int:version>", apis.AgentVersionDetailApi.as_view(),
         name="agent-version-detail"),
    # A/B tests
    path("agents/<uuid:agent_id>/experiments", experiment_apis.AgentExperimentListCreateApi.as_view(),
         name="agent-experiments"),
    path("experiments/<uuid:experiment_id>", experiment_apis.ExperimentDetailApi.as_view(), name="experiment-detail"),
    path("experiments/<uuid:experiment_id>/results", experiment_apis.ExperimentResultsApi.as_view(),
         name="experiment-results"),
    path("experiments/<uuid:experiment_id>/stop", experiment_apis.ExperimentStopApi.as_view(), name="experiment-stop"),
    path("experiments/<uuid:experiment_id>/promote", experiment_apis.ExperimentPromoteApi.as_view(),
         name="experiment-promote"),
    # runs
    path("runs", apis.RunListCreateApi.as_view(), name="runs"),
    path("runs/<uuid:run_id>", apis.RunDetailApi.as_view(), name="run-detail"),
    path("runs/<uuid:run_id>/pause", apis.RunPauseApi.as_view(), name="run-pause"),
    path("runs/<uuid:run_id>/resume", apis.RunResumeApi.as_view(), name="run-resume"),
    path("runs/<uuid:run_id>/cancel", apis.RunCancelApi.as_view(), name="run-cancel"),
    path("runs/<uuid:run_id>/retry", apis.RunRetryApi.as_view(), name="run-retry"),
    path("runs/<uuid:run_id>/events", apis.RunEventListApi.as_view(), name="run-events"),
    path("runs/<uuid:run_id>/messages", apis.RunMessageCreateApi.as_view(), name="run-messages"),
    path("runs/<uuid:run_id>/feedback", apis.RunFeedbackApi.as_view(), name="run-feedback"),
    path("runs/<uuid:run_id>/stream-token", apis.RunStreamTokenApi.as_view(), name="run-stream-token"),
    path("runs/<uuid:run_id>/stream", sse.run_stream, name="run-stream"),
    # checkpoints: time travel
    path("runs/<uuid:run_id>/checkpoints", apis.CheckpointListApi.as_view(), name="run-checkpoints"),
    path("runs/<uuid:run_id>/checkpoints/<uuid:checkpoint_id>", apis.CheckpointDetailApi.as_view(),
         name="run-checkpoint-detail"),
    path("runs/<uuid:run_id>/checkpoints/<uuid:checkpoint_id>/fork", apis.CheckpointForkApi.as_view(),
         name="run-checkpoint-fork"),
    path("runs/<uuid:run_id>/checkpoints/<uuid:checkpoint_id>/replay", apis.CheckpointReplayApi.as_view(),
         name="run-checkpoint-replay"),
    # tools: MCP servers, the catalogue, permissions
    path("mcp-servers", apis.McpServerListCreateApi.as_view(), name="mcp-servers"),
    path("mcp-servers/<uuid:server_id>", apis.McpServerDetailApi.as_view(), name="mcp-server-detail"),
    path("mcp-servers/<uuid:server_id>/refresh", apis.McpServerRefreshApi.as_view(), name="mcp-server-refresh"),
    path("tools", apis.ToolCatalogueApi.as_view(), name="tools"),
    path("tools/stats", apis.ToolStatsApi.as_view(), name="tool-stats"),
    path("tools/settings", apis.ToolSettingsApi.as_view(), name="tool-settings"),
    path("tool-permissions", apis.ToolPermissionListCreateApi.as_view(), name="tool-permissions"),
    path("tool-permissions/<uuid:permission_id>", apis.ToolPermissionDetailApi.as_view(),
         name="tool-permission-detail"),
    # long-term memory
    path("memories", memory_apis.MemoryListCreateApi.as_view(), name="memories"),
    path("memories/batch", memory_apis.MemoryBatchApi.as_view(), name="memories-batch"),
    path("memories/search", memory_apis.MemorySearchApi.as_view(), name="memories-search"),
    path("memories/forget", memory_apis.MemoryForgetApi.as_view(), name="memories-forget"),
    path("memories/settings", memory_apis.MemorySettingsApi.as_view(), name="memory-settings"),
    path("memories/<uuid:memory_id>", memory_apis.MemoryDetailApi.as_view(), name="memory-detail"),
    # model routing policies
    path("routing-policies", routing_apis.RoutingPolicyListCreateApi.as_view(), name="routing-policies"),
    path("routing-policies/<uuid:policy_id>", routing_apis.RoutingPolicyDetailApi.as_view(),
         name="routing-policy-detail"),
    path("routing-policies/<uuid:policy_id>/explain", routing_apis.RoutingPolicyExplainApi.as_view(),
         name="routing-policy-explain"),
    # approvals
    path("approvals", apis.ApprovalListApi.as_view(), name="approvals"),
    path("approvals/<uuid:approval_id>", apis.ApprovalDetailApi.as_view(), name="approval-detail"),
    path("approvals/<uuid:approval_id>/decide", apis.ApprovalDecideApi.as_view(), name="approval-decide"),
]
