import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="TenantKeyring",
            fields=[
                ("tenant", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                                related_name="+", serialize=False, to="tenants.tenant")),
                ("current_version", models.PositiveIntegerField(default=1)),
                ("encrypts_payloads", models.BooleanField(default=False)),
                ("updated_by", models.CharField(blank=True, default="", max_length=200)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.CreateModel(
            name="TenantDataKey",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("version", models.PositiveIntegerField()),
                ("master_key_id", models.CharField(blank=True, default="", max_length=64)),
                ("wrapped_key", models.BinaryField(default=b"")),
                ("state", models.CharField(choices=[("active", "Active"), ("retired", "Retired")], default="active",
                                           max_length=10)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("retired_at", models.DateTimeField(blank=True, null=True)),
                ("tenant", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                             to="tenants.tenant")),
            ],
            options={"ordering": ["tenant", "version"]},
        ),
        migrations.AddConstraint(
            model_name="tenantdatakey",
            constraint=models.UniqueConstraint(fields=("tenant", "version"), name="tenant_data_key_version_unique"),
        ),
    ]
