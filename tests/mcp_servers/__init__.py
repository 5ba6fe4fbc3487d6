"""MCP servers for the tests and benchmarks, written with the official SDK."""

from pathlib import Path

TOOLBOX = str(Path(__file__).resolve().with_name("toolbox.py"))
