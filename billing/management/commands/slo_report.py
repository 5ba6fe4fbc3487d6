"""Print the SLOs of every tenant and of the platform as a table. Thin: parse, call one selector, print."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import slo_selectors
from tenants.selectors import tenant_get

COLUMNS = (("agent_start_latency_p50", "start p50"), ("agent_start_latency_p99", "start p99"),
           ("turn_latency_p50", "turn p50"), ("turn_latency_p99", "turn p99"), ("error_rate", "errors"),
           ("availability", "availability"), ("tool_call_success_rate", "tools ok"))


def _cell(slo: slo_selectors.SloResult) -> str:
    if slo.value is None:
        return "-"
    text = f"{slo.value:.0f}ms" if slo.unit == "ms" else f"{slo.value * 100:.3f}%"
    return text + ("" if slo.is_met else " !")


def _budget(report: slo_selectors.SloReport, name: str) -> str:
    budget = next(slo.error_budget for slo in report.slos if slo.name == name)
    if budget is None or budget.left_fraction is None:
        return "-"
    return f"{budget.left:g} {budget.unit} ({budget.left_fraction * 100:.1f}%)"


class Command(BaseCommand):
    help = ("Print each tenant's SLOs and the platform's: latency percentiles, error rate, availability, tool "
            "success rate (' !' marks a missed objective), the error budgets left and the month's SLA credit.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant (its slug).")
        parser.add_argument("--since", type=datetime.fromisoformat,
                            help="Evaluate every SLO over [since, until) instead of its own window (ISO 8601).")
        parser.add_argument("--until", type=datetime.fromisoformat, help="End of the custom window (default: now).")
        parser.add_argument("--month", help="The SLA month, YYYY-MM (default: the current month).")

    def handle(self, *args: Any, tenant: str | None, since: datetime | None, until: datetime | None,
               month: str | None, **options: Any) -> None:
        if until is not None and since is None:
            raise CommandError("--until needs --since.")
        for moment in (since, until):
            if moment is not None and moment.tzinfo is None:
                raise CommandError("Give --since and --until with a UTC offset, e.g. 2026-03-01T00:00:00+00:00.")
        try:
            if month:
                slo_selectors.month_window(month, at=datetime.now().astimezone())
        except ValueError:
            raise CommandError(f"--month {month!r} is not YYYY-MM.") from None
        window = {"since": since, "until": until, "month": month}
        if tenant:
            reports = [slo_selectors.slo_report_get(tenant=tenant_get(slug=tenant), **window)]
        else:
            platform = slo_selectors.slo_report_platform(**window)
            reports = [*platform.tenants, platform.overall]
        header = ["tenant", "tier", *(title for _, title in COLUMNS), "error budget", "availability budget",
                  "SLA"]
        rows = [header]
        for report in reports:
            by_name = {slo.name: slo for slo in report.slos}
            sla = report.sla
            sla_text = "-" if sla is None else (
                f"{sla.month} met" if sla.is_met else f"{sla.month} missed: {sla.credit_percent_due}% credit "
                                                      f"(${sla.credit_usd_due})")
            rows.append([report.scope, report.sla_tier or "-", *(_cell(by_name[name]) for name, _ in COLUMNS),
                         _budget(report, "error_rate"), _budget(report, "availability"), sla_text])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
