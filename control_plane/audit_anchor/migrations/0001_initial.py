"""Each tenant's audit chain head (public schema), and the SQL functions every tenant's audit table uses:

- audit_canonical_json(jsonb): the canonical text of a JSON value (sorted keys, no whitespace);
- audit_event_hash(...): SHA-256 (hex) of an event's canonical form, prev_hash included;
- audit_chain_link(): the BEFORE INSERT trigger that numbers, links and hashes a new event under the row
  lock of its tenant's anchor, and moves the anchor;
- audit_refuse_change(): the trigger that refuses UPDATE, DELETE and TRUNCATE.

The canonical form is documented in docs/security-audit.md and reimplemented in control_plane/audit/chain.py;
the two must agree byte for byte. The triggers themselves are installed per tenant schema by
audit/0002_hash_chain.
"""

from django.db import migrations, models

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION public.audit_canonical_json(value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    result text;
BEGIN
    CASE jsonb_typeof(value)
    WHEN 'object' THEN
        -- COLLATE "C" orders keys by their UTF-8 bytes, which is code point order (Python's sorted())
        SELECT '{' || coalesce(string_agg(to_json(entry.key)::text || ':' || public.audit_canonical_json(entry.item),
                                          ',' ORDER BY entry.key COLLATE "C"), '') || '}'
          INTO result FROM jsonb_each(value) AS entry(key, item);
        RETURN result;
    WHEN 'array' THEN
        SELECT '[' || coalesce(string_agg(public.audit_canonical_json(element.item), ',' ORDER BY element.position),
                               '') || ']'
          INTO result FROM jsonb_array_elements(value) WITH ORDINALITY AS element(item, position);
        RETURN result;
    ELSE
        -- a string as JSON-escaped text, a number in numeric's plain notation, true, false or null
        RETURN value::text;
    END CASE;
END
$fn$;

CREATE OR REPLACE FUNCTION public.audit_event_hash(
    id uuid, seq bigint, occurred_at timestamptz, actor_kind text, actor_id text, action text, target_type text,
    target_id text, data jsonb, prev_hash text
) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $fn$
    SELECT encode(sha256(convert_to(
        '{"action":' || to_json(action)::text
        || ',"actor_id":' || to_json(actor_id)::text
        || ',"actor_kind":' || to_json(actor_kind)::text
        || ',"data":' || public.audit_canonical_json(data)
        || ',"id":"' || id::text || '"'
        || ',"occurred_at":"' || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"'
        || ',"prev_hash":' || to_json(prev_hash)::text
        || ',"seq":' || seq::text
        || ',"target_id":' || to_json(target_id)::text
        || ',"target_type":' || to_json(target_type)::text
        || '}', 'UTF8')), 'hex')
$fn$;

CREATE OR REPLACE FUNCTION public.audit_chain_link() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    last_seq bigint;
    last_hash text;
BEGIN
    -- The anchor's row lock serialises this tenant's writers until the inserting transaction ends, so
    -- numbers follow commit order and no two events share a predecessor. Other tenants are not blocked.
    SELECT anchor.head_seq, anchor.head_hash INTO last_seq, last_hash
      FROM public.audit_chain_anchor AS anchor WHERE anchor.schema_name = TG_TABLE_SCHEMA FOR UPDATE;
    IF NOT FOUND THEN
        -- a chain's first event (or its anchor was lost): start from the table's own head
        EXECUTE format('SELECT seq, hash FROM %I.%I ORDER BY seq DESC LIMIT 1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
           INTO last_seq, last_hash;
        INSERT INTO public.audit_chain_anchor (schema_name, head_seq, head_hash, updated_at)
        VALUES (TG_TABLE_SCHEMA, coalesce(last_seq, 0), coalesce(last_hash, repeat('0', 64)), now())
        ON CONFLICT (schema_name) DO NOTHING;
        SELECT anchor.head_seq, anchor.head_hash INTO STRICT last_seq, last_hash
          FROM public.audit_chain_anchor AS anchor WHERE anchor.schema_name = TG_TABLE_SCHEMA FOR UPDATE;
    END IF;
    -- whatever the inserting statement said, the chain's columns are the trigger's
    NEW.id := coalesce(NEW.id, gen_random_uuid());
    NEW.occurred_at := coalesce(NEW.occurred_at, now());
    NEW.target_type := coalesce(NEW.target_type, '');
    NEW.target_id := coalesce(NEW.target_id, '');
    NEW.data := coalesce(NEW.data, '{}'::jsonb);
    NEW.seq := last_seq + 1;
    NEW.prev_hash := last_hash;
    NEW.hash := public.audit_event_hash(NEW.id, NEW.seq, NEW.occurred_at, NEW.actor_kind, NEW.actor_id, NEW.action,
                                        NEW.target_type, NEW.target_id, NEW.data, NEW.prev_hash);
    UPDATE public.audit_chain_anchor SET head_seq = NEW.seq, head_hash = NEW.hash, updated_at = now()
     WHERE schema_name = TG_TABLE_SCHEMA;
    RETURN NEW;
END
$fn$;

CREATE OR REPLACE FUNCTION public.audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'The audit log %.% is append-only: % is refused.', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit events are hash-chained per tenant and can only be added; see docs/security-audit.md.';
END
$fn$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS public.audit_refuse_change();
DROP FUNCTION IF EXISTS public.audit_chain_link();
DROP FUNCTION IF EXISTS public.audit_event_hash(uuid, bigint, timestamptz, text, text, text, text, text, jsonb, text);
DROP FUNCTION IF EXISTS public.audit_canonical_json(jsonb);
"""


class Migration(migrations.Migration):

    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="AuditChainAnchor",
            fields=[
                ("schema_name", models.CharField(max_length=63, primary_key=True, serialize=False)),
                ("head_seq", models.BigIntegerField()),
                ("head_hash", models.CharField(max_length=64)),
                ("updated_at", models.DateTimeField()),
            ],
            options={"db_table": "audit_chain_anchor"},
        ),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
    ]
