"""Graph parsing and validation: every problem is named, with its path."""

import pytest

from data_plane.runtime.core.graph import GraphInvalid, graph_from_json, graph_to_json, validate
from data_plane.runtime.core.messages import ToolDefinition
from data_plane.runtime.core.spec import default_loop, spec_from_json

CALC = ToolDefinition(name="calculator", description="calc")


def codes(graph_json, **kwargs) -> set[tuple[str, str]]:
    with pytest.raises(GraphInvalid) as exc:
        validate(graph_from_json(graph_json), **kwargs)
    return {(e["code"], e["path"]) for e in exc.value.errors}


def test_a_valid_graph_round_trips_through_json():
    graph_json = {"entry": "a", "max_steps": 5, "nodes": [
        {"id": "a", "kind": "llm", "next": "r", "tools": ["calculator"]},
        {"id": "r", "kind": "router", "routes": [{"when": {"kind": "has_tool_calls"}, "goto": "t"}], "default": "e"},
        {"id": "t", "kind": "tools", "next": "a"},
        {"id": "e", "kind": "end"}]}
    graph = graph_from_json(graph_json)
    validate(graph, tools=[CALC])
    assert graph_to_json(graph) == graph_json


def test_unknown_node():
    assert ("unknown_node", "nodes.a") in codes({"entry": "a", "nodes": [
        {"id": "a", "kind": "llm", "next": "nowhere"}, {"id": "e", "kind": "end"}]})


def test_unknown_entry():
    assert ("unknown_node", "entry") in codes({"entry": "x", "nodes": [{"id": "e", "kind": "end"}]})


def test_unreachable_node():
    assert codes({"entry": "a", "nodes": [
        {"id": "a", "kind": "llm", "next": "e"}, {"id": "island", "kind": "llm", "next": "e"},
        {"id": "e", "kind": "end"}]}) == {("unreachable_node", "nodes.island")}


def test_cycle_without_step_limit():
    graph_json = {"entry": "a", "nodes": [
        {"id": "a", "kind": "llm", "next": "r"},
        {"id": "r", "kind": "router", "routes": [{"when": {"kind": "text_contains", "text": "again"}, "goto": "a"}],
         "default": "e"},
        {"id": "e", "kind": "end"}]}
    assert codes(graph_json) == {("cycle_without_step_limit", "max_steps")}
    validate(graph_from_json(graph_json), has_step_limit=True)  # the agent's limit is enough
    validate(graph_from_json({**graph_json, "max_steps": 10}))


def test_missing_join():
    assert ("missing_join", "nodes.p") in codes({"entry": "p", "nodes": [
        {"id": "p", "kind": "parallel", "branches": ["x", "y"], "join": ""},
        {"id": "x", "kind": "llm", "next": "e"}, {"id": "y", "kind": "llm", "next": "e"}, {"id": "e", "kind": "end"}]})


def test_branch_that_never_reaches_its_join():
    found = codes({"entry": "p", "nodes": [
        {"id": "p", "kind": "parallel", "branches": ["x", "y"], "join": "j"},
        {"id": "x", "kind": "llm", "next": "j"}, {"id": "y", "kind": "llm", "next": "e"},
        {"id": "j", "kind": "join", "next": "e"}, {"id": "e", "kind": "end"}]})
    assert found == {("missing_join", "nodes.p")}


def test_dead_end_unknown_tool_unknown_agent_and_no_end():
    found = codes({"entry": "a", "nodes": [
        {"id": "a", "kind": "llm", "tools": ["laser"], "next": "b"},
        {"id": "b", "kind": "subagent", "agent": "ghost", "next": "c"},
        {"id": "c", "kind": "tool", "tool": "calculator"}]}, tools=[], agents=["helper"])
    assert found == {("unknown_tool", "nodes.a"), ("unknown_agent", "nodes.b"), ("dead_end", "nodes.c"),
                     ("unknown_tool", "nodes.c"), ("no_end", "nodes")}


@pytest.mark.parametrize("bad, code", [
    ({"nodes": []}, "invalid"),
    ({"nodes": [{"id": "a", "kind": "teleport"}]}, "invalid"),
    ({"nodes": [{"id": "a", "kind": "end"}, {"id": "a", "kind": "end"}]}, "duplicate_node"),
    ({"nodes": [{"id": "a", "kind": "llm", "colour": "red"}]}, "invalid"),
    ({"max_steps": 0, "nodes": [{"id": "a", "kind": "end"}]}, "invalid"),
])
def test_malformed_json_is_refused_with_a_code(bad, code):
    with pytest.raises(GraphInvalid) as exc:
        graph_from_json(bad)
    assert code in {e["code"] for e in exc.value.errors}


def test_the_default_loop_is_valid_with_a_step_limit():
    validate(default_loop(), has_step_limit=True)
    with pytest.raises(GraphInvalid):
        validate(default_loop(), has_step_limit=False)


def test_spec_errors_carry_spec_paths():
    with pytest.raises(GraphInvalid) as exc:
        spec_from_json({"instructions": 3, "models": [], "tools": [{"description": "no name"}],
                        "limits": {"max_steps": -1}, "graph": {"entry": "a", "nodes": [{"id": "a", "kind": "llm"}]}})
    paths = {e["path"] for e in exc.value.errors}
    # every problem at once: the fields', and the graph's (validated although the fields are wrong)
    assert {"instructions", "models", "tools.0", "limits.max_steps", "graph.nodes.a"} <= paths
