"""manage.py slo_report: one row per tenant and one for the platform."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_tenants.utils import schema_context

from billing.tests.test_slo_selectors import _started_run
from data_plane.tests.factories import AgentVersionFactory


def test_the_report_prints_each_tenant_and_the_platform(tenant_a, tenant_b):
    # given a run of A's that started after 120 ms and failed for the platform's reasons after 1 s
    with schema_context(tenant_a.schema):
        _started_run(AgentVersionFactory(), timezone.now() - timedelta(minutes=1), 120, 1_000, code="internal_error")
    out = io.StringIO()
    # when
    call_command("slo_report", stdout=out)
    # then
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["tenant", "tier", "start", "p50", "start", "p99", "turn", "p50", "turn", "p99",
                                "errors", "availability", "tools", "ok", "error", "budget", "availability",
                                "budget", "SLA"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows[tenant_a.tenant.slug].split()[:8] == [tenant_a.tenant.slug, "standard", "120ms", "120ms", "-", "-",
                                                      "100.000%", "!"]
    assert "-0.99 runs (-9900.0%)" in rows[tenant_a.tenant.slug]  # 1 % of one turn allowed, one used
    assert rows[tenant_b.tenant.slug].split()[:6] == [tenant_b.tenant.slug, "standard", "-", "-", "-", "-"]
    assert rows["platform"].split()[:3] == ["platform", "-", "120ms"]


def test_until_without_since_is_refused(tenant_a):
    with pytest.raises(CommandError, match="--until needs --since."):
        call_command("slo_report", "--until", "2026-03-01T00:00:00+00:00", stdout=io.StringIO())
