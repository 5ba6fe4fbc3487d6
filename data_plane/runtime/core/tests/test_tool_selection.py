"""Tool selection for agents with many tools: pure, deterministic, table-driven."""

from __future__ import annotations

import pytest

from data_plane.runtime.core import machine
from data_plane.runtime.core.messages import Message, ToolCall, ToolDefinition
from data_plane.runtime.core.spec import spec_from_json
from data_plane.runtime.core.tool_selection import select_tools


def tool(name: str, description: str) -> ToolDefinition:
    return ToolDefinition(name=name, description=description)


CATALOGUE = [tool("weather__forecast", "Weather forecast for a city, next days."),
             tool("weather__alerts", "Severe weather alerts for a region."),
             tool("crm__find_customer", "Find a customer by name or email in the CRM."),
             tool("crm__create_invoice", "Create an invoice for a customer."),
             tool("files__read", "Read a file from the shared drive."),
             tool("files__write", "Write a file to the shared drive."),
             tool("calendar__book", "Book a meeting in a calendar.")]


@pytest.mark.parametrize("text, limit, expected", [
    ("What is the weather forecast for Paris?", 2, ["weather__forecast", "weather__alerts"]),
    ("Create an invoice for customer ACME", 2, ["crm__find_customer", "crm__create_invoice"]),
    ("Book a meeting on Tuesday", 1, ["calendar__book"]),
    ("Read the file report.txt from the drive", 2, ["files__read", "files__write"]),
    ("anything at all", 7, [t.name for t in CATALOGUE]),  # no more than the limit: all of them
])
def test_the_most_relevant_tools_are_offered_in_their_original_order(text, limit, expected):
    chosen = select_tools(CATALOGUE, [Message(role="user", content=text)], limit=limit)
    assert [t.name for t in chosen] == expected


def test_tools_the_run_already_called_stay_offered():
    messages = [Message(role="user", content="Book a meeting"),
                Message(role="assistant", content="", tool_calls=(ToolCall(id="1", name="files__read",
                                                                               arguments={}),)),
                Message(role="user", content="and now the weather forecast")]
    chosen = select_tools(CATALOGUE, messages, limit=2)
    assert [t.name for t in chosen] == ["weather__forecast", "files__read"]


def test_selection_is_deterministic_and_says_which_in_the_model_request():
    spec = spec_from_json({"instructions": "x", "models": ["m"], "max_tools_per_call": 2,
                           "tools": [t.to_json() for t in CATALOGUE]})
    state, commands = machine.start(spec, input="Weather forecast for Oslo please", now=0.0)
    plan = machine.pending_commands(state, spec)
    assert [command.request.metadata.get("tools_selected") for command in plan] == [None]  # plan offers none
    # the act node offers the agent's tools: the two most relevant of seven, and says so
    act = machine._model_request(state, spec, spec.workflow.node("act"))
    assert act.metadata["tools_selected"] == ["weather__forecast", "weather__alerts"]
    assert act.metadata["tools_available"] == 7 and [t.name for t in act.tools] == act.metadata["tools_selected"]
    assert machine._model_request(state, spec, spec.workflow.node("act")) == act


def test_the_limit_is_validated():
    from data_plane.runtime.core.graph import GraphInvalid

    with pytest.raises(GraphInvalid) as invalid:
        spec_from_json({"instructions": "x", "models": ["m"], "max_tools_per_call": 0})
    assert invalid.value.errors[0]["path"] == "max_tools_per_call"
