"""The tenant's audit log: every state change and tool call, in the tenant's own schema."""
