"""A zero-latency chat model for the step benchmarks: the ChatModel port with a fixed script.

The same script drives our runtime and the LangGraph baseline, so both run the same conversation:
even turns (by the number of assistant messages so far) call the calculator, odd turns answer in text.
It never says STOP unless asked to, so a run goes on as long as the benchmark steps it.
"""

from __future__ import annotations

from typing import Any

from data_plane.runtime.core.messages import Message, Usage
from data_plane.runtime.core.ports import DeltaCallback, MediaSource, ModelReply, ModelRequest, RetryCallback

# A modest answer, so the conversation grows the way a chat does (about 0.4 KB a text turn).
REPLY_TEXT = ("The calculator says the expression evaluates as shown above; I have checked the arithmetic "
              "and will continue with the next part of the task, keeping the running total in mind. ") * 2
EXPRESSION = "(1250 * 0.19) + 6 * 7"


def scripted_reply(turn: int, *, stop: bool = False) -> dict[str, Any]:
    """The assistant message (as JSON) for the ``turn``-th model call; ``stop`` ends the conversation."""
    if stop:
        return {"role": "assistant", "content": "STOP"}
    if turn % 2 == 0:
        return {"role": "assistant", "content": "",
                "tool_calls": [{"id": f"call-{turn}", "name": "calculator", "arguments": {"expression": EXPRESSION}}]}
    return {"role": "assistant", "content": REPLY_TEXT}


class ZeroChatModel:
    """Answers at once from the script; no streaming deltas (nothing for a subscriber to see)."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None,
                       on_retry: RetryCallback | None = None, media: MediaSource | None = None) -> ModelReply:
        self.calls += 1
        turn = sum(1 for message in request.messages if message.role == "assistant")
        return ModelReply(message=Message.from_json(scripted_reply(turn)),
                          usage=Usage(model=request.models[0], input_tokens=10, output_tokens=5))
