"""The audit log becomes append-only and hash-chained (docs/security-audit.md).

In each tenant schema: chain the events already there in (occurred_at, id) order and anchor the head, then
install the triggers: BEFORE INSERT links every new event (public.audit_chain_link), BEFORE UPDATE, DELETE
and TRUNCATE refuse (public.audit_refuse_change). Dropping the schema (tenant deletion) is not affected.
"""

from django.db import migrations, models

CHAIN_EXISTING = r"""
DO $chain$
DECLARE
    event record;
    position bigint := 0;
    previous text := repeat('0', 64);
    linked text;
BEGIN
    FOR event IN SELECT * FROM audit_auditevent ORDER BY occurred_at, id LOOP
        position := position + 1;
        linked := public.audit_event_hash(event.id, position, event.occurred_at, event.actor_kind, event.actor_id,
                                          event.action, event.target_type, event.target_id, event.data, previous);
        UPDATE audit_auditevent SET seq = position, prev_hash = previous, hash = linked WHERE id = event.id;
        previous := linked;
    END LOOP;
    -- an anchor left by an earlier schema of the same name is not this chain's
    DELETE FROM public.audit_chain_anchor WHERE schema_name = current_schema();
    IF position > 0 THEN
        INSERT INTO public.audit_chain_anchor (schema_name, head_seq, head_hash, updated_at)
        VALUES (current_schema(), position, previous, now());
    END IF;
END
$chain$;
"""

TRIGGERS = """
CREATE TRIGGER audit_chain_link BEFORE INSERT ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION public.audit_chain_link();
CREATE TRIGGER audit_refuse_change BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_refuse_change();
CREATE TRIGGER audit_refuse_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_refuse_change();
"""

DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS audit_refuse_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_refuse_change ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_chain_link ON audit_auditevent;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0001_initial"),
        ("audit_anchor", "0001_initial"),
    ]

    operations = [
        migrations.AddField(model_name="auditevent", name="seq",
                            field=models.BigIntegerField(db_default=0, editable=False)),
        migrations.AddField(model_name="auditevent", name="prev_hash",
                            field=models.CharField(db_default="", editable=False, max_length=64)),
        migrations.AddField(model_name="auditevent", name="hash",
                            field=models.CharField(db_default="", editable=False, max_length=64)),
        migrations.RunSQL(CHAIN_EXISTING, migrations.RunSQL.noop),
        migrations.AlterField(model_name="auditevent", name="seq",
                              field=models.BigIntegerField(db_default=0, editable=False, unique=True)),
        migrations.AlterModelOptions(name="auditevent", options={"ordering": ["-seq"]}),
        migrations.RunSQL(TRIGGERS, DROP_TRIGGERS),
    ]
