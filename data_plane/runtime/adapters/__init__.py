"""The core's ports implemented with the ORM, Redis, litellm and the MCP SDK."""

import os

# Before any adapter imports litellm: its price map (the model costs) is the copy shipped with the package.
# Without this, importing litellm fetches the map from GitHub, blocking (with retries) when there is no network,
# and prices could change under a running process. Django's settings set it too; this covers every other entry.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
