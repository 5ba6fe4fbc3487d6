"""The agent runtime core: pure Python, no Django, no network, no clock. Effects come back as commands."""
