"""UTC hours and days: the periods usage is rolled up and reported in."""

from __future__ import annotations

import calendar
from datetime import date, datetime
from datetime import timezone as dt_timezone


def hour_start(moment: datetime) -> datetime:
    """The UTC hour ``moment`` falls in."""
    return moment.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def day_start(moment: datetime | date) -> datetime:
    """The UTC day ``moment`` falls in, as its midnight (a date is taken as a UTC day)."""
    if not isinstance(moment, datetime):
        return datetime(moment.year, moment.month, moment.day, tzinfo=dt_timezone.utc)
    return moment.astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def days_in_month(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]
