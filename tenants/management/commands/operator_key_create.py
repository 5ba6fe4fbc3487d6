"""Mint a platform operator key and print it once. Thin: parse, call one service, print."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants import services


class Command(BaseCommand):
    help = "Create a platform operator key (prints the secret once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="Who or what holds the key.")
        parser.add_argument("--replace", action="store_true",
                            help="Revoke the live operator keys with the same name first.")

    def handle(self, *args: Any, name: str, replace: bool, **options: Any) -> None:
        issued = services.operator_key_create(name=name, replace_existing=replace)
        self.stdout.write(issued.plaintext)
