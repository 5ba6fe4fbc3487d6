"""The CPU cost of payload encryption per checkpoint step: what PostgresCheckpointStore.commit adds for a tenant
that encrypts payloads (seal the appended message, the changed values and the control record) and what load adds
per message read back (open). No database: the statement and its round trip are the same size either way but for
the ciphertext's base64 (+33 %) and 28 bytes of nonce and tag per sealed item.

    .venv/bin/python -m bench.encryption_bench
"""

from __future__ import annotations

import json
import os
import time
from statistics import median

from common.crypto import DataKeyCipher, data_key_new
from data_plane.runtime.core.messages import Message
from data_plane.runtime.core.state import RunState

ROUNDS = 20_000


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def typical_delta() -> tuple[str, dict[str, str], str]:
    """One step of the checkpoint bench's conversation: a 2 KB message, one changed value, the control."""
    message = Message(role="assistant", content=os.urandom(1024).hex())  # 2 KB of text
    state = RunState(status="running", messages=(message,) * 26, values={"plan": ["a", "b"]}, frontier=("llm",),
                     steps=26, cost_usd=0.01, input_tokens=1000, output_tokens=500)
    return _dumps(message.to_json()), {"plan": _dumps(["a", "b"])}, _dumps(state.control_json())


def per_step_us(fn, rounds: int = ROUNDS) -> float:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        samples.append((time.perf_counter() - start) / rounds * 1e6)
    return median(samples)


def main() -> None:
    cipher = DataKeyCipher(tenant_id="bench", keys={1: data_key_new()}, current_version=1)
    message, values, control = typical_delta()
    run_id = "0b6f1f7c-8f4e-4c43-9d6a-3e5c1a2b7f10"

    def seal_step() -> tuple[str, list[str], str]:
        sealed_message = cipher.seal_text(message, bound_to=f"run-message:t_bench:{run_id}:25")
        sealed_values = [cipher.seal_text(v, bound_to=f"run-value:t_bench:{run_id}:26:{k}") for k, v in values.items()]
        sealed_control = cipher.seal_text(control, bound_to=f"checkpoint:t_bench:{run_id}")
        return sealed_message, sealed_values, sealed_control

    sealed_message, _, _ = seal_step()

    def open_message() -> str:
        return cipher.open_text(sealed_message, bound_to=f"run-message:t_bench:{run_id}:25")

    def plain_dumps() -> str:  # what commit already does per step, for scale
        return _dumps([json.loads(message)]) + _dumps(values) + control

    print(f"typical step delta: message {len(message)} B, values {sum(map(len, values.values()))} B, "
          f"control {len(control)} B")
    print(f"seal one step (message + 1 value + control): {per_step_us(seal_step):.1f} us")
    print(f"open one 2 KB message on load:               {per_step_us(open_message):.1f} us")
    print(f"for scale, the JSON encoding commit already does per step: {per_step_us(plain_dumps):.1f} us")
    print(f"bytes: message {len(message)} -> {len(sealed_message) + 2} stored")


if __name__ == "__main__":
    main()
