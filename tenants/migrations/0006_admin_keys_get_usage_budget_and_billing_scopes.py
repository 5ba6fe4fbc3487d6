"""Keys that held every scope there was (tenants' admin keys) get the usage, budget and billing scopes."""

from django.db import migrations

BEFORE = {"tenant:read", "keys:read", "keys:write", "audit:read", "pings:read", "pings:write", "agents:read",
          "agents:write", "runs:read", "runs:write", "approvals:write", "tools:read", "tools:write", "memories:read",
          "memories:write", "guardrails:read", "guardrails:write", "members:read", "members:write", "oauth:read",
          "oauth:write"}
ADDED = ["usage:read", "budgets:read", "budgets:write", "billing:read", "billing:write"]


def grant(apps, schema_editor):
    ApiKey = apps.get_model("tenants", "ApiKey")
    for key in ApiKey.objects.filter(scopes__contains=sorted(BEFORE)):
        key.scopes = list(dict.fromkeys([*key.scopes, *ADDED]))
        key.save(update_fields=["scopes"])


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0005_admin_keys_get_member_and_oauth_scopes"),
    ]

    operations = [
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
