from __future__ import annotations

import factory

from data_plane.models import Agent, AgentVersion, EffectRecordRow, Ping, Run, RunEventRecord


class PingFactory(factory.django.DjangoModelFactory):
    """A queued ping; create it inside the tenant's schema (``schema_context``)."""

    class Meta:
        model = Ping

    message = factory.Faker("sentence", nb_words=4)


_TIMESTAMP_FIELDS = {Run: ("created_at", "started_at", "finished_at"), RunEventRecord: ("created_at",),
                     EffectRecordRow: ("started_at",)}


class _RecordedAtFactory(factory.django.DjangoModelFactory):
    """A row whose automatic timestamps (``auto_now_add``) are set to the given ones after it is created: the SLO
    tests build a history with known times."""

    class Meta:
        abstract = True

    @classmethod
    def _create(cls, model_class, *args, **kwargs):  # type: ignore[no-untyped-def]
        times = {name: kwargs.pop(name) for name in _TIMESTAMP_FIELDS[model_class] if name in kwargs}
        instance = super()._create(model_class, *args, **kwargs)
        if times:
            model_class.objects.filter(pk=instance.pk).update(**times)
            for name, value in times.items():
                setattr(instance, name, value)
        return instance


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    name = factory.Sequence(lambda n: f"agent-{n}")


class AgentVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentVersion

    agent = factory.SubFactory(AgentFactory)
    version = 1
    spec = factory.LazyFunction(lambda: {"instructions": "", "models": ["openai/gpt-4o-mini"]})


class RunFactory(_RecordedAtFactory):
    """A run as recorded (no checkpoint): set ``created_at``, ``status`` and ``finished_at`` as the history needs."""

    class Meta:
        model = Run

    agent_version = factory.SubFactory(AgentVersionFactory)
    input = "hello"
    status = Run.Status.QUEUED


class RunEventFactory(_RecordedAtFactory):
    class Meta:
        model = RunEventRecord

    run = factory.SubFactory(RunFactory)
    seq = factory.Sequence(lambda n: n + 1)
    type = "run.status"
    data = factory.LazyFunction(dict)


class EffectRecordFactory(_RecordedAtFactory):
    """A journalled call: ``started_at``/``finished_at``/``latency_ms`` as recorded; a tool call by default."""

    class Meta:
        model = EffectRecordRow

    run = factory.SubFactory(RunFactory)
    step = 1
    key = factory.Sequence(lambda n: f"call-{n}")
    kind = EffectRecordRow.Kind.TOOL
    idempotency_key = factory.Sequence(lambda n: f"effect-{n}")
    digest = factory.Sequence(lambda n: f"digest-{n}")
    name = "calculator"
    status = EffectRecordRow.Status.SUCCEEDED
    result = factory.LazyFunction(lambda: {"is_error": False, "content": "4"})
