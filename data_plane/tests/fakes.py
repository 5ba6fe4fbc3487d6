"""Fakes at the outside edge only: a scripted chat model (the LLM provider is outside the building)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from data_plane.runtime.core.messages import Message, ToolCall, Usage
from data_plane.runtime.core.ports import DeltaCallback, MediaSource, ModelReply, ModelRequest, ProviderUnavailable, \
    RetryCallback


def text(content: str) -> Message:
    return Message(role="assistant", content=content)


def calls(*tool_calls: tuple[str, str, dict]) -> Message:
    return Message(role="assistant", tool_calls=tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in tool_calls))


class FakeChatModel:
    """Plays replies chosen by the number of assistant messages in the request (like the model server),
    or by a function of the request. Records every request it was asked."""

    def __init__(self, replies: Sequence[Message] | Callable[[ModelRequest], Message],
                 *, cost_usd: float = 0.001, fail_times: int = 0) -> None:
        self.replies = replies
        self.cost_usd = cost_usd
        self.fail_times = fail_times
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest, *, on_delta: DeltaCallback | None = None,
                       on_retry: RetryCallback | None = None, media: MediaSource | None = None) -> ModelReply:
        self.requests.append(request)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ProviderUnavailable("scripted outage")
        if callable(self.replies):
            message = self.replies(request)
        else:
            turn = sum(1 for m in request.messages if m.role == "assistant")
            message = self.replies[min(turn, len(self.replies) - 1)]
        if on_delta is not None and message.content:
            for word in message.content.split(" "):
                await on_delta(word + " ")
        return ModelReply(message=message, usage=Usage(model=request.models[0], input_tokens=10, output_tokens=5,
                                                       cost_usd=self.cost_usd))
