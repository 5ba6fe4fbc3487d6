"""Payload encryption: a sealed column for run values and for memories' text; the memories' full-text vector
becomes a plain column (its generated expression dropped, values and GIN index kept) that a trigger keeps from
``text`` for plain rows, since a sealed row's words come from the service (the database never sees them)."""

import django.contrib.postgres.search
from django.db import migrations, models

TRIGGER = """
CREATE OR REPLACE FUNCTION data_plane_memory_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.sealed_text = '' THEN
    NEW.search_vector := to_tsvector('english'::regconfig, COALESCE(NEW.text, ''));
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER data_plane_memory_search_vector BEFORE INSERT OR UPDATE OF text, sealed_text ON data_plane_memory
  FOR EACH ROW EXECUTE FUNCTION data_plane_memory_search_vector();
"""

UNDO = """
DROP TRIGGER IF EXISTS data_plane_memory_search_vector ON data_plane_memory;
DROP FUNCTION IF EXISTS data_plane_memory_search_vector();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("data_plane", "0011_attachment"),
    ]

    operations = [
        migrations.AddField(model_name="runvalue", name="sealed_value", field=models.TextField(null=True)),
        migrations.AddField(model_name="memory", name="sealed_text",
                            field=models.TextField(blank=True, default="")),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL("ALTER TABLE data_plane_memory ALTER COLUMN search_vector DROP EXPRESSION",
                                  reverse_sql=migrations.RunSQL.noop),
                migrations.RunSQL(TRIGGER, reverse_sql=UNDO),
            ],
            state_operations=[
                migrations.AlterField(model_name="memory", name="search_vector",
                                      field=django.contrib.postgres.search.SearchVectorField(editable=False,
                                                                                             null=True)),
            ],
        ),
    ]
