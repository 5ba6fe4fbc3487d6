from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """pgvector in the public schema: every tenant schema's search_path includes public, so all can use it."""

    dependencies = [("tenants", "0001_initial")]
    operations = [VectorExtension()]
