"""Tenants: the registry (public schema), domains, API keys and operator keys, tenant resolution."""
