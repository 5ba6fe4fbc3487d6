"""A/B tests through the services: variants as agent versions, deterministic assignment of runs, stop, promote,
and the per-variant results (data_plane/services/experiments.py, data_plane/experiment_selectors.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import F
from django_tenants.utils import schema_context

from conftest import TEST_ACTOR
from control_plane.audit.models import AuditEvent
from data_plane import experiment_statistics as statistics
from data_plane import services
from data_plane.errors import AgentArchived, ExperimentAlreadyPromoted, ExperimentAlreadyRunning, ExperimentInvalid, \
    ExperimentNameTaken, ExperimentNotRunning
from data_plane.experiment_assignment import variant_index
from data_plane.experiment_selectors import experiment_assignment, experiment_results
from data_plane.models import AgentVersion, Experiment, ExperimentVariant, Run, RunEvent

SPEC = {"instructions": "Be exact.", "models": ["openai/strong"]}
VARIANTS = [{"name": "control", "weight": 1, "is_control": True},
            {"name": "mini", "weight": 1, "overrides": {"models": ["openai/mini"], "instructions": "Be brief."}}]


@pytest.fixture
def agent(tenant_a):
    with schema_context(tenant_a.schema):
        yield services.agent_create(tenant=tenant_a.tenant, name="helper", description="", spec=SPEC, actor=TEST_ACTOR)


def create(tenant_a, agent, name="cheaper", variants=VARIANTS) -> Experiment:
    return services.experiment_create(tenant=tenant_a.tenant, agent_id=agent.id, name=name, variants=variants,
                                      actor=TEST_ACTOR)


def start(tenant_a, agent, **kwargs) -> Run:
    return services.run_start(tenant=tenant_a.tenant, agent_id=agent.id, input="hi", actor=TEST_ACTOR, **kwargs)


def keys_for(experiment: Experiment, variant_position: int, count: int) -> list[str]:
    """The first ``count`` keys k0, k1, ... that the experiment's hash sends to the variant at this position."""
    weights = [v.weight for v in experiment.variants.order_by("position")]
    keys = (f"k{i}" for i in range(10_000))
    chosen = [key for key in keys if variant_index(salt=experiment.salt, key=key, weights=weights) == variant_position]
    return chosen[:count]


def test_variants_get_versions_of_their_own_that_never_become_the_latest(tenant_a, agent):
    with schema_context(tenant_a.schema):
        # when
        experiment = create(tenant_a, agent)
        # then
        control, mini = experiment.variants.order_by("position")
        assert (control.name, control.is_control, control.weight, control.agent_version.version) == (
            "control", True, 1.0, 1)
        assert (mini.name, mini.is_control, mini.agent_version.version, mini.agent_version.is_variant) == (
            "mini", False, 2, True)
        assert mini.agent_version.spec["models"] == ["openai/mini"]
        assert mini.agent_version.spec["instructions"] == "Be brief."
        agent.refresh_from_db()
        assert agent.latest_version == 1
        assert (experiment.status, len(experiment.salt)) == ("running", 32)
        # a later update of the agent is numbered after the variant's version and becomes the latest
        updated = services.agent_update(tenant=tenant_a.tenant, agent_id=agent.id, actor=TEST_ACTOR,
                                        spec={**SPEC, "instructions": "v3"})
        assert updated.latest_version == 3
        assert list(AgentVersion.objects.filter(agent=agent).order_by("version").values_list(
            "version", "is_variant")) == [(1, False), (2, True), (3, False)]
        audit = AuditEvent.objects.get(action="experiment.create")
        assert (audit.target_id, audit.data["variants"]) == (str(experiment.id), [
            {"name": "control", "weight": 1.0, "is_control": True, "version": 1, "overrides": []},
            {"name": "mini", "weight": 1.0, "is_control": False, "version": 2,
             "overrides": ["instructions", "models"]}])


def test_runs_are_assigned_by_key_the_same_key_always_the_same_variant(tenant_a, agent):
    with schema_context(tenant_a.schema):
        # given
        experiment = create(tenant_a, agent)
        [control_key] = keys_for(experiment, 0, 1)
        [mini_key] = keys_for(experiment, 1, 1)
        # when
        by_end_user = [start(tenant_a, agent, end_user=mini_key) for _ in range(3)]
        by_key = [start(tenant_a, agent, end_user="someone", assignment_key=control_key) for _ in range(3)]
        pinned = start(tenant_a, agent, end_user=mini_key, version=1)
        anonymous = start(tenant_a, agent)
        # then
        assert {(r.experiment_variant.name, r.agent_version.version, r.assignment_key) for r in by_end_user} == {
            ("mini", 2, mini_key)}
        assert {(r.experiment_variant.name, r.agent_version.version, r.assignment_key) for r in by_key} == {
            ("control", 1, control_key)}
        assert {r.experiment_id for r in by_end_user + by_key} == {experiment.id}
        # an explicit version is never assigned
        assert (pinned.experiment_id, pinned.experiment_variant_id, pinned.assignment_key) == (None, None, "")
        # without end user or key, a fresh random key (recorded) chooses
        assert anonymous.experiment_id == experiment.id and len(anonymous.assignment_key) == 32
        weights = [1.0, 1.0]
        expected = ["control", "mini"][variant_index(salt=experiment.salt, key=anonymous.assignment_key,
                                                     weights=weights)]
        assert anonymous.experiment_variant.name == expected
        # recorded in the run's first status event and its audit event
        event = RunEvent.objects.get(run=by_end_user[0], type="run.status")
        assert event.data == {"status": "queued", "experiment": {
            "experiment_id": str(experiment.id), "experiment": "cheaper", "variant": "mini"}}
        audit = AuditEvent.objects.get(action="run.start", target_id=str(by_end_user[0].id))
        assert audit.data == {"agent": "helper", "version": 2, "experiment_id": str(experiment.id),
                              "experiment": "cheaper", "variant": "mini"}


def test_assignment_is_the_same_on_every_call(tenant_a, agent):
    with schema_context(tenant_a.schema):
        experiment = create(tenant_a, agent, variants=[
            {"name": "a", "weight": 50, "is_control": True}, {"name": "b", "weight": 30, "overrides": {
                "models": ["openai/b"]}}, {"name": "c", "weight": 20, "overrides": {"models": ["openai/c"]}}])
        keys = [f"user-{i}" for i in range(200)]
        first = [experiment_assignment(tenant_schema=tenant_a.schema, agent_id=agent.id, key=k).variant_name
                 for k in keys]
        second = [experiment_assignment(tenant_schema=tenant_a.schema, agent_id=agent.id, key=k).variant_name
                  for k in keys]
        expected = [["a", "b", "c"][variant_index(salt=experiment.salt, key=k, weights=[50, 30, 20])] for k in keys]
    assert first == second == expected


@pytest.mark.parametrize(("variants", "message", "errors"), [
    ([{"name": "a", "weight": 1, "is_control": True}], "An experiment has 2 to 10 variants (got 1)",
     {"variants": ["Give 2 to 10 variants."]}),
    ([{"name": "a", "weight": 1, "is_control": True}, {"name": "b", "weight": 0}],
     "b: weight must be a positive number (got 0).", {"variants": {"b": ["weight must be a positive number (got 0)."]}}),
    ([{"name": "a", "weight": 1}, {"name": "b", "weight": 1}],
     "is_control: Mark exactly one variant as the control (is_control: true); marked: none.",
     {"variants": {"is_control": ["Mark exactly one variant as the control (is_control: true); marked: none."]}}),
    ([{"name": "a", "weight": 1, "is_control": True}, {"name": "a", "weight": 1}],
     "a: The name 'a' is used twice", {"variants": {"a": ["The name 'a' is used twice; variant names are unique."]}}),
    ([{"name": "a", "weight": 1, "is_control": True}, {"name": "b", "weight": 1, "overrides": {"graph": {}}}],
     "b: overrides cannot change graph", None),
    ([{"name": "a", "weight": 100000, "is_control": True}, {"name": "b", "weight": 1}],
     "b: weight is too small: the variant would get no traffic", None),
    ([{"name": "a", "weight": 1, "is_control": True}, {"name": "b", "weight": 1, "overrides": {"models": []}}],
     "Variant 'b': The agent spec is invalid: models: models must be a non-empty list",
     {"variants": {"b": [{"path": "models", "code": "invalid", "message": "models must be a non-empty list of model "
                                                                          "names, the first preferred, then fallbacks."}]}}),
])
def test_invalid_variants_are_refused_and_nothing_is_created(tenant_a, agent, variants, message, errors):
    with schema_context(tenant_a.schema):
        # when
        with pytest.raises(ExperimentInvalid) as raised:
            create(tenant_a, agent, variants=variants)
        # then
        assert (raised.value.code, raised.value.http_status) == ("experiment_invalid", 400)
        assert message in raised.value.message
        if errors is not None:
            assert raised.value.extra["errors"] == errors
        assert Experiment.objects.count() == 0 and ExperimentVariant.objects.count() == 0
        assert list(AgentVersion.objects.filter(agent=agent).values_list("version", flat=True)) == [1]
        assert not AuditEvent.objects.filter(action="experiment.create").exists()


def test_a_variant_may_route_with_a_tenant_policy_that_exists(tenant_a, agent):
    with schema_context(tenant_a.schema):
        variants = [VARIANTS[0], {"name": "routed", "weight": 1, "overrides": {"routing_policy": "cheap-first"}}]
        # given no policy of that name: refused, nothing created
        with pytest.raises(ExperimentInvalid) as invalid:
            create(tenant_a, agent, variants=variants)
        assert invalid.value.message == (
            "Variant 'routed': The agent spec is invalid: routing_policy: No routing policy named 'cheap-first'; the "
            "tenant's policies: none yet; create one with POST /v1/routing-policies.")
        assert Experiment.objects.count() == 0
        # given the policy
        services.routing_policy_create(tenant=tenant_a.tenant, name="cheap-first", is_default=False, actor=TEST_ACTOR,
                                       policy={"tiers": {"cheap": ["openai/gpt-4o-mini"], "strong": ["openai/gpt-4o"]}})
        # when
        experiment = create(tenant_a, agent, variants=variants)
        # then the variant's version carries it
        assert experiment.variants.get(name="routed").agent_version.spec["routing_policy"] == "cheap-first"


def test_one_running_experiment_per_agent_unique_names_and_no_archived_agent(tenant_a, agent):
    with schema_context(tenant_a.schema):
        first = create(tenant_a, agent)
        with pytest.raises(ExperimentAlreadyRunning) as running:
            create(tenant_a, agent, name="second")
        assert str(first.id) in running.value.message and running.value.http_status == 409
        services.experiment_stop(tenant=tenant_a.tenant, experiment_id=first.id, actor=TEST_ACTOR)
        with pytest.raises(ExperimentNameTaken):
            create(tenant_a, agent, name="cheaper")
        second = create(tenant_a, agent, name="second")  # once the first stopped
        assert second.status == "running"
        services.experiment_stop(tenant=tenant_a.tenant, experiment_id=second.id, actor=TEST_ACTOR)
        services.agent_archive(tenant=tenant_a.tenant, agent_id=agent.id, actor=TEST_ACTOR)
        with pytest.raises(AgentArchived):
            create(tenant_a, agent, name="third")
        assert Experiment.objects.count() == 2


def test_stop_ends_assignment(tenant_a, agent):
    with schema_context(tenant_a.schema):
        # given
        experiment = create(tenant_a, agent)
        # when
        stopped = services.experiment_stop(tenant=tenant_a.tenant, experiment_id=experiment.id, actor=TEST_ACTOR)
        # then
        assert stopped.status == "stopped" and stopped.stopped_at is not None
        run = start(tenant_a, agent, end_user="anyone")
        assert (run.experiment_id, run.agent_version.version) == (None, 1)
        with pytest.raises(ExperimentNotRunning) as again:
            services.experiment_stop(tenant=tenant_a.tenant, experiment_id=experiment.id, actor=TEST_ACTOR)
        assert again.value.message == f"Experiment {experiment.id} is stopped; only a running experiment can be stopped."
        assert AuditEvent.objects.filter(action="experiment.stop", target_id=str(experiment.id)).count() == 1


def test_promote_makes_the_variant_spec_the_agent_latest_version(tenant_a, agent):
    with schema_context(tenant_a.schema):
        # given
        experiment = create(tenant_a, agent)
        mini_spec = experiment.variants.get(name="mini").agent_version.spec
        # when
        promoted = services.experiment_promote(tenant=tenant_a.tenant, experiment_id=experiment.id, variant="mini",
                                               actor=TEST_ACTOR)
        # then
        agent.refresh_from_db()
        assert agent.latest_version == 3
        latest = AgentVersion.objects.get(agent=agent, version=3)
        assert (latest.spec, latest.is_variant) == (mini_spec, False)
        assert (promoted.status, promoted.promoted_variant.name, promoted.promoted_version) == ("promoted", "mini", 3)
        assert promoted.promoted_at is not None and promoted.stopped_at == promoted.promoted_at
        run = start(tenant_a, agent, end_user="anyone")
        assert (run.experiment_id, run.agent_version.version) == (None, 3)
        audit = AuditEvent.objects.get(action="experiment.promote")
        assert audit.data == {"agent": "helper", "name": "cheaper", "variant": "mini", "variant_version": 2,
                              "version": 3}
        with pytest.raises(ExperimentAlreadyPromoted):
            services.experiment_promote(tenant=tenant_a.tenant, experiment_id=experiment.id, variant="control",
                                        actor=TEST_ACTOR)


def test_promoting_an_unchanged_control_adds_no_version_and_unknown_variants_are_refused(tenant_a, agent):
    with schema_context(tenant_a.schema):
        experiment = create(tenant_a, agent)
        with pytest.raises(ExperimentInvalid) as unknown:
            services.experiment_promote(tenant=tenant_a.tenant, experiment_id=experiment.id, variant="nope",
                                        actor=TEST_ACTOR)
        assert unknown.value.message == "Experiment 'cheaper' has no variant 'nope'; its variants: control, mini."
        assert Experiment.objects.get(id=experiment.id).status == "running"
        promoted = services.experiment_promote(tenant=tenant_a.tenant, experiment_id=experiment.id, variant="control",
                                               actor=TEST_ACTOR)
        agent.refresh_from_db()
        assert (agent.latest_version, promoted.promoted_version) == (1, 1)
        assert AgentVersion.objects.filter(agent=agent).count() == 2


def _finish(run: Run, *, status: str, cost: float, seconds: float | None = None) -> None:
    Run.objects.filter(id=run.id).update(
        status=status, cost_usd=cost,
        finished_at=F("created_at") + timedelta(seconds=seconds or 1) if status != "running" else None)


def test_results_per_variant_with_intervals_and_tests_against_the_control(tenant_a, agent):
    with schema_context(tenant_a.schema):
        # given: 4 control runs (2 completed in 10 s and 20 s, 1 failed, 1 still running), 3 mini runs completed
        experiment = create(tenant_a, agent)
        control = [start(tenant_a, agent, assignment_key=key) for key in keys_for(experiment, 0, 4)]
        mini = [start(tenant_a, agent, assignment_key=key) for key in keys_for(experiment, 1, 3)]
        for run, status, cost, seconds in zip(control, ["completed", "completed", "failed", "running"],
                                              [0.01, 0.02, 0.03, 0], [10, 20, 3, None]):
            _finish(run, status=status, cost=cost, seconds=seconds)
        for run, cost, seconds in zip(mini, [0.001, 0.002, 0.003], [5, 6, 7]):
            _finish(run, status="completed", cost=cost, seconds=seconds)
        for run, score in [(control[0], 1.0), (control[0], 0.5), (control[1], 0.25), (mini[0], 1.0), (mini[1], 0.5)]:
            services.run_feedback_create(tenant=tenant_a.tenant, run_id=run.id, score=score, comment="",
                                         actor=TEST_ACTOR)
        # when
        results = experiment_results(tenant_schema=tenant_a.schema, experiment_id=experiment.id)
    # then
    by_name = {r.variant.name: r for r in results.variants}
    c, m = by_name["control"], by_name["mini"]
    assert (c.runs, c.active, c.completion.trials, c.completion.successes, c.traffic_share) == (4, 1, 3, 2, 0.5)
    assert (m.runs, m.active, m.completion.trials, m.completion.successes, m.traffic_share) == (3, 0, 3, 3, 0.5)
    assert c.completion == statistics.rate_estimate(2, 3)
    assert c.completion.rate == pytest.approx(2 / 3) and m.completion.rate == 1.0
    assert (c.cost_usd.n, c.cost_usd.mean) == (3, pytest.approx(0.02))
    assert (m.cost_usd.n, m.cost_usd.mean) == (3, pytest.approx(0.002))
    assert (c.latency_seconds.n, c.latency_seconds.mean, c.latency_p50_seconds.median) == (2, 15.0, 15.0)
    assert (m.latency_seconds.n, m.latency_seconds.mean, m.latency_p50_seconds.median) == (3, 6.0, 6.0)
    assert m.latency_seconds == statistics.mean_estimate([5.0, 6.0, 7.0])
    assert (c.score.n, c.score.mean, m.score.n, m.score.mean) == (2, 0.5, 2, 0.75)  # a run's scores are averaged
    assert c.vs_control is None
    rate = m.vs_control["completion_rate"]
    # by hand: pooled 5/6, se = sqrt(5/6 · 1/6 · (1/3 + 1/3)) = 0.3042903, z = (1 - 2/3) / se = 1.0954451
    assert (rate.statistic, rate.p_value, rate.significant) == (pytest.approx(1.0954451, abs=1e-7),
                                                                pytest.approx(0.2733217, abs=1e-7), False)
    assert m.vs_control["cost_usd"] == statistics.welch_t_test([0.01, 0.02, 0.03], [0.001, 0.002, 0.003])
    assert m.vs_control["latency_seconds"] == statistics.welch_t_test([10.0, 20.0], [5.0, 6.0, 7.0])
    assert m.vs_control["score"] == statistics.welch_t_test([0.75, 0.25], [1.0, 0.5])
    assert m.vs_control["cost_usd"].difference == pytest.approx(-0.018)
    assert results.caveats == ["Runs still active are counted in 'runs' and 'active' only, not in the rates or means."]


def test_agent_version_get_reads_the_version_and_its_agent_as_the_orm_does(tenant_a, agent):
    """The selector writes its query by hand: every field of the version and of its agent reads back as the ORM
    reads it (the spec decoded, times aware), the latest or a given version, with whether an experiment runs."""
    from data_plane.errors import AgentNotFound
    from data_plane.selectors import agent_version_get

    def fields(instance):
        return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}

    with schema_context(tenant_a.schema):
        services.agent_update(tenant=tenant_a.tenant, agent_id=agent.id, spec={**SPEC, "instructions": "v2"},
                              actor=TEST_ACTOR)
        for version, number in ((None, 2), (1, 1)):
            found = agent_version_get(tenant_schema=tenant_a.schema, agent_id=agent.id, version=version,
                                      note_running_experiment=True)
            expected = AgentVersion.objects.select_related("agent").get(agent_id=agent.id, version=number)
            assert fields(found) == fields(expected) and fields(found.agent) == fields(expected.agent)
            assert found.spec["instructions"] == ("v2" if number == 2 else "Be exact.")
            assert found.running_experiment is False and found.created_at.tzinfo is not None
        create(tenant_a, agent)
        assert agent_version_get(tenant_schema=tenant_a.schema, agent_id=agent.id,
                                 note_running_experiment=True).running_experiment is True
        with pytest.raises(AgentNotFound) as missing:
            agent_version_get(tenant_schema=tenant_a.schema, agent_id=agent.id, version=9)
        assert missing.value.message == "Agent 'helper' has no version 9 (latest: 2)."
