"""``manage.py finance_report --start 2026-11-01 --end 2026-11-30 [--csv] [--sessions] [--group-by tenant,day]``:
the operators' finance report (docs/metering.md), as JSON or CSV on standard output."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing import selectors
from billing.apis import finance_csv, finance_json


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise CommandError(f"{raw!r} is not a day; write it as YYYY-MM-DD.") from None


def _amount(raw: str) -> Decimal:
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0:
        raise CommandError(f"{raw!r} is not an amount of USD; write it as a number such as 150000.")
    return amount


class Command(BaseCommand):
    help = "Per tenant, model and day: tokens, LLM cost, infrastructure share, revenue, margin; cost per session."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--start", required=True, help="First UTC day, YYYY-MM-DD (included).")
        parser.add_argument("--end", required=True, help="Last UTC day, YYYY-MM-DD (included).")
        parser.add_argument("--group-by", default=",".join(selectors.FINANCE_DIMENSIONS),
                            help="Comma-separated subset of tenant, model, day.")
        parser.add_argument("--infrastructure-usd-per-month", default=None, help=(
            "The month's infrastructure cost to allocate (default: FINANCE_INFRASTRUCTURE_USD_PER_MONTH)."))
        parser.add_argument("--csv", action="store_true", help="CSV with a header row instead of JSON.")
        parser.add_argument("--sessions", action="store_true", help="With --csv: the cost per session instead.")

    def handle(self, *args: Any, **options: Any) -> None:
        start, end = _day(options["start"]), _day(options["end"])
        if end < start:
            raise CommandError(f"--end ({end}) must not be before --start ({start}).")
        group_by = tuple(part.strip() for part in options["group_by"].split(",") if part.strip())
        if set(group_by) - set(selectors.FINANCE_DIMENSIONS) or len(set(group_by)) != len(group_by):
            raise CommandError(f"--group-by takes a subset of {', '.join(selectors.FINANCE_DIMENSIONS)}; "
                               f"got {options['group_by']!r}.")
        group_by = tuple(d for d in selectors.FINANCE_DIMENSIONS if d in group_by)
        report = selectors.finance_report(
            start=start, end=end, group_by=group_by,
            infrastructure_usd_per_month=_amount(options["infrastructure_usd_per_month"]
                                                 or settings.FINANCE_INFRASTRUCTURE_USD_PER_MONTH))
        if options["csv"]:
            self.stdout.write(finance_csv(report, sessions=options["sessions"]), ending="")
        else:
            self.stdout.write(json.dumps(finance_json(report), indent=2))
