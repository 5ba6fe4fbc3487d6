"""The data plane's sealed values: what binds each to its place, the tenant's cipher and checkpoint store,
and where they are kept (registered with the encryption context for re-sealing at rotation).

Always sealed: MCP servers' credentials, the memory settings' embedding API key. Sealed when the tenant's
policy encrypts payloads: checkpoint payloads (messages, values, control; see
runtime/adapters/checkpoints.py) and memories' text (``Memory.sealed_text``; ``text`` is then '').
"""

from __future__ import annotations

import json
from uuid import UUID

from django.db import connection

from data_plane.runtime.adapters.checkpoints import (
    PostgresCheckpointStore,
    control_bound_to,
    message_bound_to,
    payload_json,
    value_bound_to,
)
from control_plane.encryption.services import SealedLocation, TenantCipher, sealed_location_register, tenant_cipher


def mcp_server_bound_to(tenant_schema: str, server_id: UUID | str) -> str:
    return f"mcp-server:{tenant_schema}:{server_id}"


def memory_settings_bound_to(tenant_schema: str) -> str:
    return f"{tenant_schema}:memory"


def memory_text_bound_to(tenant_schema: str, memory_id: UUID | str) -> str:
    return f"memory-text:{tenant_schema}:{memory_id}"


def cipher_for(tenant_schema: str) -> TenantCipher:
    """The tenant's cipher (kept in the process for a while; see encryption.services)."""
    return tenant_cipher(tenant_schema=tenant_schema)


def checkpoint_store(tenant_schema: str) -> PostgresCheckpointStore:
    """The tenant's checkpoint store, sealing payloads when its policy says so and opening sealed ones."""
    return PostgresCheckpointStore(schema=tenant_schema, connection=connection, cipher=cipher_for(tenant_schema))


def memory_text_open(*, tenant_schema: str, memory_id: UUID | str, sealed_text: str) -> str:
    return cipher_for(tenant_schema).open_text(sealed_text, bound_to=memory_text_bound_to(tenant_schema, memory_id))


def run_message_open(*, tenant_schema: str, run_id: UUID | str, seq: int, sealed: str) -> str:
    """A sealed run message's JSON text."""
    return cipher_for(tenant_schema).open_text(sealed, bound_to=message_bound_to(tenant_schema, run_id, seq))


LOCATIONS = (
    SealedLocation(name="mcp_server.credentials", table="data_plane_mcpserver", key_sql="id",
                   sealed_sql="sealed_secrets", assign_sql="sealed_secrets = %(sealed)s",
                   bound_to=lambda schema, key: mcp_server_bound_to(schema, key[0])),
    SealedLocation(name="memory_settings.embedding_api_key", table="data_plane_memorysettings", key_sql="id",
                   sealed_sql="embedding_api_key_encrypted", assign_sql="embedding_api_key_encrypted = %(sealed)s",
                   bound_to=lambda schema, key: memory_settings_bound_to(schema)),
    SealedLocation(name="memory.text", table="data_plane_memory", key_sql="id", sealed_sql="sealed_text",
                   assign_sql="sealed_text = %(sealed)s",
                   bound_to=lambda schema, key: memory_text_bound_to(schema, key[0])),
    # A checkpoint's sealed messages are JSON strings in its messages' array (base64 needs no escaping), each
    # bound to its number (first_seq + its index); its sealed values are a JSON object's, each bound to its step
    # and key.
    SealedLocation(name="checkpoint.messages", table="data_plane_checkpoint", key_sql="run_id, first_seq",
                   sealed_sql="messages", assign_sql="messages = %(sealed)s",
                   bound_to=lambda schema, key: message_bound_to(schema, key[0], key[1] + key[2]),
                   parts=lambda text: {i: item for i, item in enumerate(json.loads(text)) if isinstance(item, str)},
                   assemble=lambda text, parts: payload_json(
                       [parts.get(i, item) for i, item in enumerate(json.loads(text))]),
                   part_sql_re=r"[\[,]"),
    SealedLocation(name="checkpoint.values", table="data_plane_checkpoint", key_sql="run_id, step",
                   sealed_sql="sealed_values", assign_sql="sealed_values = %(sealed)s",
                   bound_to=lambda schema, key: value_bound_to(schema, key[0], key[1], key[2]),
                   parts=json.loads, assemble=lambda text, parts: payload_json({**json.loads(text), **parts}),
                   part_sql_re=":"),
    SealedLocation(name="checkpoint.control", table="data_plane_checkpoint", key_sql="id",
                   sealed_sql="(control->>'sealed')",
                   assign_sql="control = jsonb_set(control, '{sealed}', to_jsonb(%(sealed)s::text))",
                   bound_to=lambda schema, key: control_bound_to(schema, key[0])),
)


def register() -> None:
    for location in LOCATIONS:
        sealed_location_register(location)
