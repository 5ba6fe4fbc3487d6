"""The core's ports implemented with the ORM, Redis, litellm and the MCP SDK."""
