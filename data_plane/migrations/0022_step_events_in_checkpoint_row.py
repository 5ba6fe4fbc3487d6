import django.db.models.deletion
from django.db import migrations, models

# A commit's events move into its checkpoint's row (Checkpoint.events, numbered first_event_seq to
# last_event_seq): a step's commit writes one row fewer per event, and two index entries fewer. Events that no
# commit makes (a pause, a tool call started, an approval's decision) are still recorded on their own, in the
# table that held all of them (now RunEventRecord's); the events recorded before stay there. RunEvent is a view
# of both, one row per event, as the table was.

VIEW = """
CREATE VIEW data_plane_runevent_all AS
SELECT e.run_id, e.seq, e.type::text AS type, e.data, e.created_at, e.seq AS batch_first_seq,
       e.seq AS batch_last_seq
FROM data_plane_runevent e
UNION ALL
SELECT c.run_id, c.first_event_seq + x.ord - 1, x.value->>'type', (x.value->'data')::jsonb, c.created_at,
       c.first_event_seq, c.last_event_seq
FROM data_plane_checkpoint c CROSS JOIN LATERAL json_array_elements(c.events::json) WITH ORDINALITY AS x(value, ord)
WHERE c.events IS NOT NULL
"""

# Back: the checkpoints' events into the table again, before their columns go.
BACKWARD = [
    """
    INSERT INTO data_plane_runevent (run_id, seq, type, data, created_at)
    SELECT c.run_id, c.first_event_seq + x.ord - 1, x.value->>'type', (x.value->'data')::jsonb, c.created_at
    FROM data_plane_checkpoint c CROSS JOIN LATERAL json_array_elements(c.events::json) WITH ORDINALITY AS x(value, ord)
    WHERE c.events IS NOT NULL
    """,
    "DROP VIEW data_plane_runevent_all",
]


class Migration(migrations.Migration):

    dependencies = [
        ('data_plane', '0021_step_is_one_checkpoint_row'),
    ]

    operations = [
        migrations.AddField(
            model_name='checkpoint',
            name='events',
            field=models.TextField(null=True),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='first_event_seq',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='last_event_seq',
            field=models.BigIntegerField(default=0),
        ),
        # The table keeps its name, its rows and its constraint: only the model's name changes.
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.RenameModel(old_name='RunEvent', new_name='RunEventRecord'),
            migrations.AlterModelTable(name='runeventrecord', table='data_plane_runevent'),
            migrations.AlterField(
                model_name='runeventrecord',
                name='run',
                field=models.ForeignKey(db_constraint=False, db_index=False,
                                        on_delete=django.db.models.deletion.DO_NOTHING, related_name='+',
                                        to='data_plane.run'),
            ),
        ]),
        migrations.CreateModel(
            name='RunEvent',
            fields=[
                ('pk', models.CompositePrimaryKey('run', 'seq', blank=True, editable=False, primary_key=True,
                                                  serialize=False)),
                ('seq', models.BigIntegerField()),
                ('type', models.CharField(max_length=64)),
                ('data', models.JSONField(default=dict)),
                ('created_at', models.DateTimeField()),
                ('batch_first_seq', models.BigIntegerField()),
                ('batch_last_seq', models.BigIntegerField()),
                ('run', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING,
                                          related_name='events', to='data_plane.run')),
            ],
            options={
                'db_table': 'data_plane_runevent_all',
                'ordering': ['run', 'seq'],
                'managed': False,
            },
        ),
        migrations.RunSQL(sql=VIEW, reverse_sql=BACKWARD),
    ]
