"""Keys that held every scope there was (tenants' admin keys) get the guardrail scopes added since."""

from django.db import migrations

BEFORE = {"tenant:read", "keys:read", "keys:write", "audit:read", "pings:read", "pings:write", "agents:read",
          "agents:write", "runs:read", "runs:write", "approvals:write", "tools:read", "tools:write", "memories:read",
          "memories:write"}
ADDED = ["guardrails:read", "guardrails:write"]


def grant(apps, schema_editor):
    ApiKey = apps.get_model("tenants", "ApiKey")
    for key in ApiKey.objects.filter(scopes__contains=sorted(BEFORE)):
        key.scopes = list(dict.fromkeys([*key.scopes, *ADDED]))
        key.save(update_fields=["scopes"])


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0003_admin_keys_get_memory_scopes"),
    ]

    operations = [
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
