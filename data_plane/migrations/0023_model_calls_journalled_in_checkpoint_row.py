import django.contrib.postgres.fields
import django.contrib.postgres.indexes
import django.db.models.deletion
from django.db import migrations, models

# A fresh step's model calls (nothing marked them started: the step's commit journals them whole) move into
# their checkpoint's row (Checkpoint.effects, with ids from the journal's own sequence in effect_ids): a model
# step's commit writes one row and four index entries fewer. Every other call stays in the journal's table
# (now EffectRecordRow's), and so do the calls recorded before. EffectRecord is a view of both, one row each, as
# the table was.

# A checkpoint's calls as journal rows (the table's columns, in its order, then the row's created_at).
INLINE = """
SELECT c.effect_ids[x.ord] AS id, c.run_id, (x.value->>'step')::int AS step, x.value->>'key' AS key,
       x.value->>'kind' AS kind, x.value->>'idempotency_key' AS idempotency_key, x.value->>'digest' AS digest,
       x.value->>'name' AS name, (x.value->'request')::jsonb AS request, (x.value->'result')::jsonb AS result,
       x.value->>'status' AS status, 1 AS attempts, (x.value->>'latency_ms')::float8 AS latency_ms,
       (x.value->>'input_tokens')::int AS input_tokens, (x.value->>'output_tokens')::int AS output_tokens,
       (x.value->>'cost_usd')::numeric(14, 8) AS cost_usd, NULL::bigint AS reused_from,
       c.created_at - make_interval(secs => (x.value->>'ago')::float8) AS started_at,
       c.created_at - make_interval(secs => (x.value->>'ago')::float8) AS finished_at, c.created_at
FROM data_plane_checkpoint c CROSS JOIN LATERAL json_array_elements(c.effects::json) WITH ORDINALITY AS x(value, ord)
WHERE c.effects IS NOT NULL
"""

COLUMNS = ("id, run_id, step, key, kind, idempotency_key, digest, name, request, result, status, attempts, "
           "latency_ms, input_tokens, output_tokens, cost_usd, reused_from, started_at, finished_at")

VIEW = f"""
CREATE VIEW data_plane_effectrecord_all AS
SELECT e.id, e.run_id, e.step, e.key::text AS key, e.kind::text AS kind, e.idempotency_key::text AS idempotency_key,
       e.digest::text AS digest, e.name::text AS name, e.request, e.result, e.status::text AS status, e.attempts,
       e.latency_ms, e.input_tokens, e.output_tokens, e.cost_usd,
       e.reused_from, e.started_at, e.finished_at, e.finished_at AS batch_created_at
FROM data_plane_effectrecord e
UNION ALL
{INLINE}
"""

# Back: the checkpoints' calls into the table again (with their ids), before their columns go.
BACKWARD = [
    f"INSERT INTO data_plane_effectrecord ({COLUMNS}) SELECT {COLUMNS} FROM ({INLINE}) AS inline",
    "DROP VIEW data_plane_effectrecord_all",
]


class Migration(migrations.Migration):

    dependencies = [
        ('data_plane', '0022_step_events_in_checkpoint_row'),
    ]

    operations = [
        migrations.AddField(
            model_name='checkpoint',
            name='effects',
            field=models.TextField(null=True),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='effect_ids',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), null=True,
                                                            size=None),
        ),
        migrations.AddIndex(
            model_name='checkpoint',
            index=django.contrib.postgres.indexes.BrinIndex(fields=['created_at'], name='checkpoint_created_brin'),
        ),
        # The table keeps its name, its rows, its constraint and its indexes: only the model's name changes.
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.RenameModel(old_name='EffectRecord', new_name='EffectRecordRow'),
            migrations.AlterModelTable(name='effectrecordrow', table='data_plane_effectrecord'),
            migrations.AlterField(
                model_name='effectrecordrow',
                name='run',
                field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING,
                                        related_name='+', to='data_plane.run'),
            ),
        ]),
        migrations.CreateModel(
            name='EffectRecord',
            fields=[
                ('id', models.BigIntegerField(primary_key=True, serialize=False)),
                ('step', models.PositiveIntegerField()),
                ('key', models.CharField(max_length=200)),
                ('kind', models.CharField(choices=[('model', 'Model'), ('tool', 'Tool')], max_length=10)),
                ('idempotency_key', models.CharField(max_length=300)),
                ('digest', models.CharField(max_length=64)),
                ('name', models.CharField(max_length=200)),
                ('request', models.JSONField(default=dict)),
                ('result', models.JSONField(null=True)),
                ('status', models.CharField(choices=[('started', 'Started'), ('succeeded', 'Succeeded'),
                                                     ('failed', 'Failed')], default='started', max_length=10)),
                ('attempts', models.PositiveIntegerField(default=1)),
                ('latency_ms', models.FloatField(null=True)),
                ('input_tokens', models.PositiveIntegerField(default=0)),
                ('output_tokens', models.PositiveIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=8, default=0, max_digits=14)),
                ('reused_from', models.BigIntegerField(blank=True, null=True)),
                ('started_at', models.DateTimeField(auto_now_add=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('batch_created_at', models.DateTimeField(null=True)),
                ('run', models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING,
                                          related_name='effects', to='data_plane.run')),
            ],
            options={
                'db_table': 'data_plane_effectrecord_all',
                'ordering': ['run', 'step', 'id'],
                'managed': False,
            },
        ),
        migrations.RunSQL(sql=VIEW, reverse_sql=BACKWARD),
    ]
