"""Our scripted OpenAI-compatible model server: local, deterministic LLM answers for tests, demos and benchmarks."""

from data_plane.model_server.app import ServerHandle, create_app, start_in_thread

__all__ = ["ServerHandle", "create_app", "start_in_thread"]
