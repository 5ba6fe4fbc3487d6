"""Built-in tools the platform runs itself (MCP servers of tenants come with the tools issue).

Every tool takes the call's idempotency key: the same key never repeats an effect.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from django.db import IntegrityError, close_old_connections
from django_tenants.utils import schema_context

from data_plane.models import Note
from data_plane.runtime.core.messages import ToolCall, ToolDefinition, ToolResult

BUILTIN_TOOLS: dict[str, ToolDefinition] = {
    "calculator": ToolDefinition(
        name="calculator", description="Evaluate an arithmetic expression (+ - * / ** %, parentheses).",
        input_schema={"type": "object", "properties": {"expression": {"type": "string"}},
                      "required": ["expression"]}),
    "get_time": ToolDefinition(
        name="get_time", description="The current date and time in UTC (ISO 8601).",
        input_schema={"type": "object", "properties": {}}),
    "wait": ToolDefinition(
        name="wait", description="Wait a number of seconds (at most 300), then answer 'waited'.",
        input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]}),
    "note_append": ToolDefinition(
        name="note_append", description="Append a note to the tenant's notebook; returns the note's number.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
}

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv, ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


class CalculatorError(ValueError):
    pass


def calculate(expression: str) -> float | int:
    """Evaluate arithmetic safely (no names, calls or attributes; bounded exponents)."""

    def evaluate(node: ast.AST) -> Any:
        match node:
            case ast.Expression(body=body):
                return evaluate(body)
            case ast.Constant(value=value) if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _OPERATORS:
                a, b = evaluate(left), evaluate(right)
                if isinstance(op, ast.Pow) and abs(b) > 100:
                    raise CalculatorError("exponent too large (at most 100)")
                return _OPERATORS[type(op)](a, b)
            case ast.UnaryOp(op=op, operand=operand) if type(op) in _OPERATORS:
                return _OPERATORS[type(op)](evaluate(operand))
        raise CalculatorError(f"unsupported expression element: {type(node).__name__}")

    if len(expression) > 500:
        raise CalculatorError("expression too long (at most 500 characters)")
    try:
        return evaluate(ast.parse(expression, mode="eval"))
    except (SyntaxError, ZeroDivisionError) as exc:
        raise CalculatorError(str(exc)) from None


class BuiltinToolRunner:
    """Runs the built-in tools for one tenant schema and run."""

    def __init__(self, *, tenant_schema: str, run_id: str, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.tenant_schema = tenant_schema
        self.run_id = run_id
        self.clock = clock
        self.sleep = sleep

    async def call(self, call: ToolCall, *, idempotency_key: str) -> ToolResult:
        started = time.perf_counter()
        try:
            content, structured = await self._dispatch(call, idempotency_key)
            is_error = False
        except (CalculatorError, TypeError, ValueError, KeyError) as exc:
            content, structured, is_error = f"Error: {exc}", None, True
        return ToolResult(call_id=call.id, name=call.name, content=content, is_error=is_error, structured=structured,
                          latency_ms=round((time.perf_counter() - started) * 1000, 3))

    async def _dispatch(self, call: ToolCall, idempotency_key: str) -> tuple[str, Any]:
        args = call.arguments
        match call.name:
            case "calculator":
                value = calculate(str(args["expression"]))
                return str(value), value
            case "get_time":
                now = datetime.fromtimestamp(self.clock(), tz=timezone.utc).isoformat(timespec="seconds")
                return now, now
            case "wait":
                seconds = float(args["seconds"])
                if not 0 <= seconds <= 300:
                    raise ValueError("seconds must be between 0 and 300")
                await self.sleep(seconds)
                return "waited", seconds
            case "note_append":
                number = await asyncio.to_thread(self._note_append, str(args["text"]), idempotency_key)
                return f"note #{number} saved", number
        raise KeyError(f"tool {call.name!r} is not available to this agent")

    def _note_append(self, text: str, idempotency_key: str) -> int:
        close_old_connections()
        with schema_context(self.tenant_schema):
            try:
                note = Note.objects.create(idempotency_key=idempotency_key, run_id=self.run_id, text=text)
            except IntegrityError:
                note = Note.objects.get(idempotency_key=idempotency_key)
            return note.id
