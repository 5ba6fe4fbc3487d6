from __future__ import annotations

import factory

from data_plane.models import Ping


class PingFactory(factory.django.DjangoModelFactory):
    """A queued ping; create it inside the tenant's schema (``schema_context``)."""

    class Meta:
        model = Ping

    message = factory.Faker("sentence", nb_words=4)
