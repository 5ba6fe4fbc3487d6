"""Guardrails: per-tenant policies and the checks on inputs, outputs and tool calls (tenant schema)."""
