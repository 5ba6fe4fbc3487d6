"""Factories for the tenant registry. Tenants themselves come from the real provisioning service
(a tenant is a migrated schema, not just a row): see ``provision_for_test`` in the root conftest."""

from __future__ import annotations

import factory
from django.conf import settings

from common.keys import KeyHasher
from tenants.models import ApiKey, OperatorKey


class _HashedKeyFactory(factory.django.DjangoModelFactory):
    """Creates a key the way the service stores it; the plaintext is on the instance as ``plaintext``."""

    class Meta:
        abstract = True

    name = factory.Faker("word")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):  # type: ignore[no-untyped-def]
        generated = KeyHasher(settings.API_KEY_PEPPER.encode()).generate(model_class.PREFIX)
        key = model_class.objects.create(*args, lookup_id=generated.lookup_id,
                                         secret_hash=generated.secret_hash, **kwargs)
        key.plaintext = generated.plaintext
        return key


class ApiKeyFactory(_HashedKeyFactory):
    class Meta:
        model = ApiKey

    scopes = factory.LazyFunction(lambda: ["tenant:read"])


class OperatorKeyFactory(_HashedKeyFactory):
    class Meta:
        model = OperatorKey
