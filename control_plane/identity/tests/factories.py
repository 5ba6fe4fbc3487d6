"""Portal users and their memberships. Tenants come from the real provisioning service (root conftest)."""

from __future__ import annotations

import uuid

import factory
from django.contrib.auth.models import User

from control_plane.identity.models import Membership

PASSWORD = "correct horse battery staple 42"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    email = factory.LazyFunction(lambda: f"user-{uuid.uuid4().hex[:12]}@example.com")
    username = factory.LazyAttribute(lambda user: user.email)
    first_name = factory.Faker("first_name")
    password = factory.django.Password(PASSWORD)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    role = "viewer"
