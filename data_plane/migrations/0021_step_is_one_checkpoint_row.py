from django.db import migrations, models

# A step's appended messages and changed values move into its checkpoint's row: a step's commit writes one row
# where it wrote three or more (the checkpoint, a row per message, a row per changed value), and their four
# index entries fewer. See docs/checkpoint-storage.md.
#
# Existing rows move as they are (a sealed message or value stays sealed, bound to the same place):
# - each checkpoint gets the JSON array of its step's messages, in order, and the number of the first;
# - its step's values, as a JSON object of the plain ones and one of the sealed ones;
# - a step whose checkpoint retention pruned (its row was deleted) gets a row without control, which reads
#   as pruned, for the messages and values later states are made of;
# - a model reply's event gets its step, by which the events API finds its message.

FORWARD = [
    """
    INSERT INTO data_plane_checkpoint (id, run_id, parent_id, step, control, first_seq, created_at)
    SELECT gen_random_uuid(), g.run_id, NULL, g.step, NULL, 0, now()
    FROM (SELECT run_id, step FROM data_plane_runmessage UNION SELECT run_id, step FROM data_plane_runvalue) g
    WHERE NOT EXISTS (SELECT 1 FROM data_plane_checkpoint c WHERE c.run_id = g.run_id AND c.step = g.step)
    """,
    """
    UPDATE data_plane_checkpoint SET first_seq = (control->>'message_count')::int WHERE control IS NOT NULL
    """,
    """
    UPDATE data_plane_checkpoint c SET first_seq = m.first_seq, messages = m.messages
    FROM (SELECT run_id, step, min(seq) AS first_seq, '[' || string_agg(message, ',' ORDER BY seq) || ']' AS messages
          FROM data_plane_runmessage GROUP BY run_id, step) m
    WHERE c.run_id = m.run_id AND c.step = m.step
    """,
    """
    UPDATE data_plane_checkpoint c SET changed_values = v.plain, sealed_values = v.sealed
    FROM (SELECT run_id, step,
                 (json_object_agg(key, value) FILTER (WHERE sealed_value IS NULL))::text AS plain,
                 (json_object_agg(key, sealed_value) FILTER (WHERE sealed_value IS NOT NULL))::text AS sealed
          FROM data_plane_runvalue GROUP BY run_id, step) v
    WHERE c.run_id = v.run_id AND c.step = v.step
    """,
    """
    UPDATE data_plane_runevent e SET data = e.data || jsonb_build_object('step', m.step)
    FROM data_plane_runmessage m
    WHERE e.type = 'model.reply' AND m.run_id = e.run_id AND m.seq = (e.data->>'message_seq')::int
    """,
]

# Back: the rows out of the arrays and objects again, and the pruned steps' rows gone (control is NOT NULL), as
# retention deleted them before.
BACKWARD = [
    """
    INSERT INTO data_plane_runmessage (run_id, seq, step, message)
    SELECT c.run_id, c.first_seq + m.ord - 1, c.step, m.value::text
    FROM data_plane_checkpoint c, json_array_elements(c.messages::json) WITH ORDINALITY AS m(value, ord)
    WHERE c.messages IS NOT NULL
    """,
    """
    INSERT INTO data_plane_runvalue (run_id, step, key, value, sealed_value)
    SELECT c.run_id, c.step, v.key, v.value, NULL FROM data_plane_checkpoint c, jsonb_each(c.changed_values::jsonb) v
    WHERE c.changed_values IS NOT NULL
    UNION ALL
    SELECT c.run_id, c.step, v.key, NULL, v.value FROM data_plane_checkpoint c, json_each_text(c.sealed_values::json) v
    WHERE c.sealed_values IS NOT NULL
    """,
    "UPDATE data_plane_run SET source_checkpoint_id = NULL WHERE source_checkpoint_id IN "
    "(SELECT id FROM data_plane_checkpoint WHERE control IS NULL)",
    "DELETE FROM data_plane_checkpoint WHERE control IS NULL",
    "SET CONSTRAINTS ALL IMMEDIATE",  # the checks the deletion deferred, before control's column is altered
]


class Migration(migrations.Migration):

    dependencies = [
        ('data_plane', '0020_effect_journal_without_run_constraint'),
    ]

    operations = [
        migrations.AddField(
            model_name='checkpoint',
            name='changed_values',
            field=models.TextField(null=True),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='first_seq',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='messages',
            field=models.TextField(null=True),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='sealed_values',
            field=models.TextField(null=True),
        ),
        migrations.AlterField(
            model_name='checkpoint',
            name='control',
            field=models.JSONField(null=True),
        ),
        migrations.RunSQL(sql=FORWARD, reverse_sql=BACKWARD),
        migrations.DeleteModel(
            name='RunMessage',
        ),
        migrations.DeleteModel(
            name='RunValue',
        ),
    ]
