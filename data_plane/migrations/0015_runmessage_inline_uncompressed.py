from django.db import migrations


class Migration(migrations.Migration):
    """A run's messages stay in their row, uncompressed, up to about 8 KB each.

    Postgres compresses a row over about 2 KB with pglz. A run's messages are read back whole, in order, on
    every load of a checkpoint (resume, replay, fork, the state API), and decompressing them was most of a
    load: 2.6 of 3.5 ms of the server's time for a 500-step conversation of 2 KB messages. With the toast
    target at its maximum a message up to about 8 KB is neither compressed nor moved out of line; larger ones
    are toasted as before. The price is disk: uncompressed prose takes about twice the space. Rows written
    before this migration stay as they were.
    """

    dependencies = [
        ("data_plane", "0014_merge_0013_experiments_0013_routing_policies"),
    ]

    operations = [
        migrations.RunSQL("ALTER TABLE data_plane_runmessage SET (toast_tuple_target = 8160)",
                          reverse_sql="ALTER TABLE data_plane_runmessage RESET (toast_tuple_target)"),
    ]
