import uuid

import pytest
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.models import Run
from data_plane.tests.fakes import FakeChatModel, calls, text
from data_plane.tools import BuiltinToolRunner


@pytest.fixture
def tenant(committed):
    provisioned = provision_for_test("runs")
    yield provisioned
    destroy_tenant(provisioned.tenant)


def test_default_loop_runs_to_completion(tenant):
    model = FakeChatModel([text("1. compute"), calls(("c1", "calculator", {"expression": "6*7"})), text("It is 42"),
                           text("The answer is 42. DONE")])
    dispatched = []
    stepper = RunStepper(tenant_schema=tenant.schema, chat_model=model,
                         tool_runner_factory=lambda run_id: BuiltinToolRunner(tenant_schema=tenant.schema, run_id=run_id),
                         dispatch=lambda run_id, step: dispatched.append((run_id, step)), tenant=tenant.tenant)
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="calc", description="", actor=TEST_ACTOR, spec={
            "instructions": "Be exact.", "models": ["openai/x"],
            "tools": [{"name": "calculator", "description": "calc", "input_schema": {"type": "object"}}]})
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="6*7?", actor=TEST_ACTOR)
    step = 0
    for _ in range(10):
        outcome = stepper.run_step(run.id, step)
        print(outcome)
        if outcome.run_status != "running":
            break
        step = outcome.step
    with schema_context(tenant.schema):
        run.refresh_from_db()
    assert run.status == "completed", (run.status, run.error)
    assert run.output == "The answer is 42"
