"""The scopes an API key can hold. Each endpoint names the scope it needs (least privilege)."""

from __future__ import annotations

SCOPES: dict[str, str] = {
    "tenant:read": "Read the tenant's own profile.",
    "keys:read": "List and read API keys (never their secrets).",
    "keys:write": "Create and revoke API keys, within the creating key's own scopes.",
    "audit:read": "Read the tenant's audit log.",
    "pings:read": "Read data-plane pings.",
    "pings:write": "Send data-plane pings (a task executed by a worker in the tenant's schema).",
    "agents:read": "List and read agents and their versions, specs included.",
    "agents:write": "Create agents, change them (a new spec adds a version) and archive them.",
    "runs:read": "Read runs, their checkpoints (full state), events and approvals.",
    "runs:write": "Start runs; pause, resume, cancel and retry them; fork and replay them from a checkpoint.",
    "approvals:write": "Approve or reject a run's pending approval, optionally editing the tool arguments.",
    "tools:read": "List MCP servers (never their credentials), the tool catalogue and tool permissions.",
    "tools:write": "Register, refresh and archive MCP servers; set and remove tool permissions.",
    "memories:read": "Search, list and read the tenant's long-term memories, and read the memory settings.",
    "memories:write": "Write and delete memories, forget an end user or an agent, and change the memory settings.",
    "guardrails:read": "Read guardrail policies and flags, and dry-run a text against a policy.",
    "guardrails:write": "Set and remove guardrail policies (the tenant's and agents'), and review flags.",
    "members:read": "List the tenant's portal users, their roles and pending invitations.",
    "members:write": "Invite portal users, change their roles and remove them (never above the caller's own role).",
    "oauth:read": "List the tenant's OAuth 2.0 client applications (never their secrets).",
    "oauth:write": "Register, change and delete OAuth 2.0 client applications, within the caller's own scopes.",
    "usage:read": "Read the tenant's usage (tokens, cost, runs), its quotas, SLOs and cost reports.",
    "budgets:read": "Read the tenant's spending budgets and their alerts.",
    "budgets:write": "Set, change and remove spending budgets (the tenant's, agents' and runs' defaults).",
    "billing:read": "Read the tenant's plan (SLA tier), subscription, invoices and payment status.",
    "billing:write": "Change the tenant's plan and its billing details.",
}

ALL_SCOPES: tuple[str, ...] = tuple(SCOPES)


def unknown_scopes(scopes: list[str]) -> list[str]:
    return [scope for scope in scopes if scope not in SCOPES]
