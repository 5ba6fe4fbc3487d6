"""Make a new key sign access tokens. The previous key keeps verifying until every token it signed has
expired, then is retired; --retire-previous-now ends the previous keys' tokens at once (a leaked key)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from control_plane.oauth import signing


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--retire-previous-now", action="store_true",
                            help="Stop accepting tokens of every earlier key at once (for a key that leaked).")

    def handle(self, *args: Any, retire_previous_now: bool, **options: Any) -> None:
        rotated = signing.signing_key_rotate(retire_previous_now=retire_previous_now)
        self.stdout.write(f"current signing key: {rotated.current.kid}")
        for kid in rotated.superseded:
            retire_at = signing.signing_key_list_published().filter(kid=kid).values_list("retire_at", flat=True).first()
            self.stdout.write(f"superseded: {kid} " + (f"(verifies until {retire_at.isoformat()})" if retire_at
                                                       else "(retired now)"))
        if rotated.retired:
            self.stdout.write(f"retired: {', '.join(rotated.retired)}")
