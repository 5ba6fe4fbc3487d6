from django.db import migrations

# The tables every step's commit writes. Postgres compresses (pglz) any row over about 2 KB before it stores
# it: for a step that appends a 2 KB message, that was the largest share of the commit's own work, and reading
# a conversation back decompressed every message again. With toast_tuple_target at its maximum, a row of up
# to 8160 bytes (a page) is stored as it is; a larger one is still compressed and moved out of line as before.
# Small rows take more disk (prose compresses about 3:1), for a cheaper write and read of every step.
STEP_TABLES = ("data_plane_checkpoint", "data_plane_runmessage", "data_plane_runvalue", "data_plane_runevent",
               "data_plane_effectrecord")


class Migration(migrations.Migration):

    dependencies = [
        ('data_plane', '0018_effectrecord_indexes_without_like'),
    ]

    operations = [
        migrations.RunSQL(
            sql=[f"ALTER TABLE {table} SET (toast_tuple_target = 8160)" for table in STEP_TABLES],
            reverse_sql=[f"ALTER TABLE {table} RESET (toast_tuple_target)" for table in STEP_TABLES],
        ),
    ]
