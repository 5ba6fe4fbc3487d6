"""The step executor against the real database, with a scripted model at the edge (no Celery)."""

import json
import uuid

import pytest
import redis
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR, destroy_tenant, provision_for_test
from data_plane import services
from data_plane.executor import RunStepper
from data_plane.models import EffectRecord, Run
from data_plane.tests.fakes import FakeChatModel, calls, text
from data_plane.tools import BUILTIN_TOOLS, BuiltinToolRunner

REPLIES = [text("1. compute"), calls(("c1", "calculator", {"expression": "6*7"})), text("It is 42"),
           text("The answer is 42. DONE")]


@pytest.fixture
def tenant(committed, settings):
    # The services dispatch real tasks after commit; here this test drives the steps itself, so they go to a
    # queue no worker consumes (a worker started by other tests in the session would take them otherwise).
    settings.RUN_STEP_QUEUE = f"agentplane-unconsumed-{uuid.uuid4().hex[:8]}"
    provisioned = provision_for_test("steps")
    yield provisioned
    destroy_tenant(provisioned.tenant)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.RUN_STEP_QUEUE)


def stepper_for(tenant, model, dispatched, steps_per_task=1):
    return RunStepper(tenant_schema=tenant.schema, chat_model=model,
                      tool_runner_factory=lambda run_id: BuiltinToolRunner(tenant_schema=tenant.schema, run_id=run_id),
                      dispatch=lambda run_id, step: dispatched.append(step), tenant=tenant.tenant,
                      steps_per_task=steps_per_task, owner="test")


def start(tenant) -> Run:
    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="calc", description="", actor=TEST_ACTOR, spec={
            "instructions": "Be exact.", "models": ["openai/x"], "tools": [BUILTIN_TOOLS["calculator"].to_json()]})
        return services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="6*7?", actor=TEST_ACTOR)


def reload(tenant, run) -> Run:
    with schema_context(tenant.schema):
        return Run.objects.get(id=run.id)


def take_over(tenant, run) -> None:
    """What another worker's claim does to the run: a new version, which fences this one's commit off."""
    from django.db.models import F

    with schema_context(tenant.schema):
        Run.objects.filter(id=run.id).update(version=F("version") + 1)


class RecordingTools:
    """The built-in tools, recording each call's idempotency key in ``made``; ``first_call`` (if given) runs in a
    thread during the first call."""

    def __init__(self, tenant, run_id, made, first_call=None):
        self.runner = BuiltinToolRunner(tenant_schema=tenant.schema, run_id=run_id)
        self.made, self.first_call = made, first_call

    async def call(self, call, *, idempotency_key):
        import asyncio

        self.made.append(idempotency_key)
        if self.first_call is not None and len(self.made) == 1:
            await asyncio.to_thread(self.first_call)
        return await self.runner.call(call, idempotency_key=idempotency_key)


def test_a_task_runs_several_steps_then_hands_the_run_back(tenant):
    # given
    run, dispatched = start(tenant), []
    stepper = stepper_for(tenant, FakeChatModel(REPLIES), dispatched, steps_per_task=2)
    # when: each task runs two steps, then dispatches the next
    outcomes = [stepper.run_step(run.id, step) for step in (0, 2, 4)]
    # then
    assert [(o.kind, o.step, o.run_status) for o in outcomes] == [
        ("advanced", 2, "running"), ("advanced", 4, "running"), ("advanced", 5, "completed")]
    assert dispatched == [2, 4]
    done = reload(tenant, run)
    assert (done.status, done.output, done.step, done.lease_owner) == ("completed", "The answer is 42", 5, "")


def test_a_provider_outage_gives_the_run_back_for_a_retry_at_the_same_step(tenant):
    run, dispatched = start(tenant), []
    model = FakeChatModel(REPLIES, fail_times=1)
    stepper = stepper_for(tenant, model, dispatched)
    first = stepper.run_step(run.id, 0)
    assert (first.kind, first.step) == ("transient", 0)
    waiting = reload(tenant, run)
    assert (waiting.status, waiting.step, waiting.lease_owner) == ("running", 0, "")  # nothing committed
    second = stepper.run_step(run.id, 0)
    assert (second.kind, second.step) == ("advanced", 1)
    assert len(model.requests) == 2 and dispatched == [1]


def test_a_duplicate_of_a_finished_task_is_dropped(tenant):
    run, dispatched = start(tenant), []
    stepper = stepper_for(tenant, FakeChatModel(REPLIES), dispatched)
    stepper.run_step(run.id, 0)
    # when: the task for step 0 is delivered again
    again = stepper.run_step(run.id, 0)
    # then: nothing runs twice
    assert again.kind == "stale"
    with schema_context(tenant.schema):
        assert EffectRecord.objects.filter(run=run).count() == 1
    assert reload(tenant, run).step == 1


def test_a_model_calls_journal_row_keeps_no_copy_of_the_conversation(tenant):
    """The request's last messages count in the call's digest (a replay of the same conversation matches it, as
    before) but the row keeps only their digest: they are the run's messages already."""
    from data_plane.executor import digest

    run, dispatched = start(tenant), []
    model = FakeChatModel(REPLIES)
    stepper_for(tenant, model, dispatched).run_step(run.id, 0)
    with schema_context(tenant.schema):
        record = EffectRecord.objects.get(run=run)
    sent = [m.to_json() for m in model.requests[0].messages]
    assert "tail" not in record.request and record.request["tail_digest"] == digest(sent[-2:])
    assert run.input not in json.dumps(record.request)
    stored = {k: v for k, v in record.request.items() if k != "tail_digest"}
    assert record.digest == digest({"kind": "model", **stored, "tail": sent[-2:]})


def test_a_run_held_by_another_worker_is_busy_not_stolen(tenant):
    run = start(tenant)
    with schema_context(tenant.schema):
        Run.objects.filter(id=run.id).update(lease_owner="someone-else", lease_expires_at="2999-01-01T00:00:00Z")
    outcome = stepper_for(tenant, FakeChatModel(REPLIES), []).run_step(run.id, 0)
    assert outcome.kind == "busy" and outcome.retry_in > 0
    assert reload(tenant, run).lease_owner == "someone-else"


def test_a_retried_run_does_not_pay_again_for_what_was_recorded(tenant):
    # given: two model calls in parallel; "fast" answers, "flaky" keeps failing until the run fails
    from data_plane.runtime.core.ports import ProviderUnavailable

    outage = {"on": True}
    paid: list[str] = []

    def reply(request):
        node = request.metadata["node"]
        if node == "flaky" and outage["on"]:
            raise ProviderUnavailable("provider down")
        paid.append(node)
        return text(f"{node} answered")

    class Model(FakeChatModel):
        async def complete(self, request, *, on_delta=None, on_retry=None):
            reply(request)
            return await super().complete(request, on_delta=on_delta)

    with schema_context(tenant.schema):
        agent = services.agent_create(tenant=tenant.tenant, name="pair", description="", actor=TEST_ACTOR, spec={
            "instructions": "x", "models": ["openai/x"], "graph": {"entry": "fan", "nodes": [
                {"id": "fan", "kind": "parallel", "branches": ["fast", "flaky"], "join": "join"},
                {"id": "fast", "kind": "llm", "next": "join"}, {"id": "flaky", "kind": "llm", "next": "join"},
                {"id": "join", "kind": "join", "next": "end"}, {"id": "end", "kind": "end"}]}})
        run = services.run_start(tenant=tenant.tenant, agent_id=agent.id, input="go", actor=TEST_ACTOR)
    model, dispatched = Model(lambda request: text(f"{request.metadata['node']} answered")), []  # the edge only
    stepper = stepper_for(tenant, model, dispatched)
    assert stepper.run_step(run.id, 0).kind == "transient"
    stepper.fail(run.id, code="provider_unavailable", message="gave up")
    assert reload(tenant, run).status == "failed" and paid == ["fast"]
    # when: the provider is back and the run is retried
    outage["on"] = False
    with schema_context(tenant.schema):
        retried = services.run_retry(tenant=tenant.tenant, run_id=run.id, actor=TEST_ACTOR)
    outcome = stepper.run_step(run.id, retried.step)
    # then: only the call that never got an answer is made again
    assert (outcome.kind, outcome.run_status) == ("advanced", "completed")
    assert paid == ["fast", "flaky"]
    with schema_context(tenant.schema):
        reused = list(EffectRecord.objects.filter(run=run).exclude(reused_from=None).values_list("key", flat=True))
    assert reused == ["fast"]


def test_a_runs_tool_calls_and_its_end_are_in_the_audit_log_with_the_steps_that_made_them(tenant):
    """The commit statement writes them: each tool call at the step that recorded its result, the run's end at
    its last step, by the runtime, in a chain that verifies."""
    from control_plane.audit.models import AuditEvent
    from control_plane.audit.selectors import audit_chain_verify

    run, dispatched = start(tenant), []
    stepper = stepper_for(tenant, FakeChatModel(REPLIES), dispatched, steps_per_task=10)
    outcome = stepper.run_step(run.id, 0)
    assert (outcome.run_status, outcome.step) == ("completed", 5)
    with schema_context(tenant.schema):
        logged = [(e.action, e.actor_kind, e.actor_id, e.data) for e in
                  AuditEvent.objects.filter(target_id=str(run.id)).exclude(action="run.start").order_by("seq")]
        report = audit_chain_verify(tenant_schema=tenant.schema)
    [(call_action, *call_actor, call), (end_action, *end_actor, end)] = logged
    assert (call_action, call_actor, end_action, end_actor) == (
        "tool.call", ["system", "runtime"], "run.completed", ["system", "runtime"])
    assert (call["tool"], call["arguments"], call["status"], call["step"]) == (
        "calculator", {"expression": "6*7"}, "ok", 3)
    assert end == {"step": 5}
    assert report.ok


def test_a_writer_fenced_off_at_its_commit_leaves_its_tool_result_for_the_runs_next_owner(tenant):
    """A step's tool results are journalled by its commit; when that commit is refused (another worker took the
    run over during the call), they are recorded on their own, so the next owner reuses them: the tool's effect
    happens once."""
    run, dispatched, made = start(tenant), [], []

    def tools(run_id):  # another worker claims the run while the tool runs
        return RecordingTools(tenant, run_id, made, first_call=lambda: take_over(tenant, run))

    def stepper(owner):
        return RunStepper(tenant_schema=tenant.schema, chat_model=FakeChatModel(REPLIES), owner=owner,
                          tool_runner_factory=tools, dispatch=lambda run_id, step: dispatched.append(step),
                          tenant=tenant.tenant)

    first = stepper("first")
    assert [first.run_step(run.id, step).kind for step in (0, 1)] == ["advanced", "advanced"]
    # when: the tool step's commit is fenced
    assert first.run_step(run.id, 2).kind == "fenced"
    with schema_context(tenant.schema):
        record = EffectRecord.objects.get(run=run, key="observe:c1")
        assert Run.objects.get(id=run.id).step == 2  # the step did not commit
    assert (record.status, record.result["content"]) == ("succeeded", "42")
    # then: the run's next owner finishes the step with the recorded result, without calling the tool again
    with schema_context(tenant.schema):
        Run.objects.filter(id=run.id).update(lease_owner="", lease_expires_at=None)
    assert stepper("second").run_step(run.id, 2).kind == "advanced"
    assert len(made) == 1
    with schema_context(tenant.schema):
        assert Run.objects.get(id=run.id).step == 3


def test_a_burst_of_fragments_is_published_as_few_deltas_and_a_paced_stream_as_one_each():
    """A model call's deltas, read back from the run's delta log: fragments that arrive while a publish is in
    flight go out together (in order, none lost, numbered without gaps), a retried attempt's are never joined
    with the failed one's, and fragments that arrive slower than a publish get a delta each."""
    import asyncio

    from data_plane import streams
    from data_plane.executor import _DeltaStream

    async def scenario():
        run_id = uuid.uuid4()
        deltas = _DeltaStream(schema="t_deltas", run_id=run_id, after_seq=3, node="llm", name="7.llm")
        for index in range(40):  # a burst: nothing waits between fragments
            await deltas.send(f"w{index} ")
        await deltas.restart(None)
        for index in range(5):
            await deltas.send(f"r{index} ")
        await deltas.flush()
        burst = await streams.delta_range(tenant_schema="t_deltas", run_id=run_id, after=0)
        paced_run = uuid.uuid4()
        paced = _DeltaStream(schema="t_deltas", run_id=paced_run, after_seq=0, node="llm", name="8.llm")
        for index in range(5):  # each fragment arrives when the previous one is out (as a real model's do)
            await paced.send(f"p{index} ")
            await paced.flush()
        paced_deltas = await streams.delta_range(tenant_schema="t_deltas", run_id=paced_run, after=0)
        for run in (run_id, paced_run):
            await streams._redis().delete(*streams._delta_keys("t_deltas", run))
        return burst, paced_deltas

    burst, paced = asyncio.run(scenario())
    assert [d["n"] for d in burst] == list(range(1, len(burst) + 1)) and len(burst) < 10
    first = [d for d in burst if d["stream"] == "7.llm.1"]
    retried = [d for d in burst if d["stream"] == "7.llm.2"]
    assert first + retried == burst  # the failed attempt's text, then the retry's
    assert "".join(d["text"] for d in first) == "".join(f"w{i} " for i in range(40))
    assert "".join(d["text"] for d in retried) == "".join(f"r{i} " for i in range(5))
    assert {(d["after_seq"], d["node"]) for d in burst} == {(3, "llm")}
    assert [d["text"] for d in paced] == [f"p{i} " for i in range(5)]


def test_a_first_claim_records_its_model_call_once_answered_and_a_later_claim_of_the_step_reuses_it(tenant):
    """A task that claims a step no task began records its model call whole when answered (no "started" mark
    first); a task that claims a step another began (here: fenced off at its commit) looks in the journal first
    and reuses the answer instead of paying for it again. A call its step's commit journals is stored in the
    checkpoint's row; one a step records on its own, in the journal's table."""
    import asyncio

    from data_plane.models import Checkpoint, EffectRecordRow

    run, dispatched = start(tenant), []

    class TakenOverWhileAnswering(FakeChatModel):
        async def complete(self, request, **kwargs):
            await asyncio.to_thread(take_over, tenant, run)
            return await super().complete(request, **kwargs)

    def stepper(model):
        return RunStepper(tenant_schema=tenant.schema, chat_model=model,
                          dispatch=lambda run_id, step: dispatched.append(step),
                          tool_runner_factory=lambda run_id: RecordingTools(tenant, run_id, []),
                          tenant=tenant.tenant, owner=f"w-{uuid.uuid4().hex[:6]}")

    first_model = TakenOverWhileAnswering(REPLIES)
    assert stepper(first_model).run_step(run.id, 0).kind == "fenced"
    with schema_context(tenant.schema):
        answered = EffectRecord.objects.get(run=run, step=0)
        Run.objects.filter(id=run.id).update(lease_owner="", lease_expires_at=None)  # its lease ran out
    # recorded whole, once answered (it was the step's first attempt), by the fenced writer on its own
    assert (answered.status, answered.attempts, answered.started_at) == ("succeeded", 1, answered.finished_at)
    with schema_context(tenant.schema):
        assert EffectRecordRow.objects.get(run=run, step=0).id == answered.id
    # when: another task claims the same step
    second_model = FakeChatModel(REPLIES)
    second = stepper(second_model)
    assert second.run_step(run.id, 0).kind == "advanced"
    # then: the answer was reused, not paid for again
    assert len(first_model.requests) == 1 and second_model.requests == []
    # and the next step, which no task began, is recorded whole once answered again
    assert second.run_step(run.id, 1).kind == "advanced" and len(second_model.requests) == 1
    with schema_context(tenant.schema):
        following = EffectRecord.objects.get(run=run, step=1)
        # by its step's commit, in the checkpoint's row (step 2's), with an id after the first call's
        assert Checkpoint.objects.get(run=run, step=2).effect_ids == [following.id] and following.id > answered.id
        assert not EffectRecordRow.objects.filter(run=run, step=1).exists()
    assert (following.attempts, following.started_at) == (1, following.finished_at)


def test_a_task_going_on_with_a_tool_step_marks_its_calls_started_in_the_commit_before_it(tenant):
    """When a task commits a step and goes on with the next, that step's tool calls are marked started by the
    commit (with their tool.started events) instead of by a statement of their own: each call still has one
    journal row (one attempt, then its result), one tool.started event before its tool.finished, and the run's
    events are numbered without gaps."""
    from data_plane.models import RunEvent

    run, dispatched, made = start(tenant), [], []

    stepper = RunStepper(tenant_schema=tenant.schema, chat_model=FakeChatModel(REPLIES),
                         tool_runner_factory=lambda run_id: RecordingTools(tenant, run_id, made),
                         dispatch=lambda run_id, step: dispatched.append(step), tenant=tenant.tenant, steps_per_task=8)
    outcome = stepper.run_step(run.id, 0)
    assert (outcome.kind, outcome.run_status) == ("advanced", "completed")
    with schema_context(tenant.schema):
        tool_rows = list(EffectRecord.objects.filter(run=run, kind="tool").values_list(
            "step", "idempotency_key", "attempts", "status", "result__content"))
        events = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", "type", "data"))
    assert tool_rows == [(2, f"{run.id}:2:observe:c1", 1, "succeeded", "42")] and made == [f"{run.id}:2:observe:c1"]
    assert [seq for seq, *_ in events] == list(range(1, len(events) + 1))
    kinds = [kind for _, kind, _ in events]
    assert kinds.count("tool.started") == 1 and kinds.index("tool.started") < kinds.index("tool.finished")
    started = next(data for _, kind, data in events if kind == "tool.started")
    assert started == {"node": "observe", "attempt": 1,
                       "call": {"id": "c1", "name": "calculator", "arguments": {"expression": "6*7"}}}
    # it came with the commit of the step before the call: the same transaction's time as that checkpoint
    assert kinds[kinds.index("tool.started") - 1] == "checkpoint.committed"
    with schema_context(tenant.schema):
        from data_plane.models import Checkpoint

        committed_at = Checkpoint.objects.get(run=run, step=2).created_at
        marked_at = EffectRecord.objects.get(run=run, kind="tool").started_at
        event_at = RunEvent.objects.get(run=run, type="tool.started").created_at
    assert marked_at == event_at == committed_at
