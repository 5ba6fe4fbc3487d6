from __future__ import annotations

from django.db import models


class AuditChainAnchor(models.Model):
    """The head (latest seq and hash) of one tenant's audit chain, kept outside the tenant's schema.

    Written only by the audit table's insert trigger, in the inserting transaction, so it always names the
    newest committed event: a chain that ends before its anchor lost its newest entries. Its row lock is the
    per-tenant lock that serialises writers of that chain. Kept after the tenant's schema is dropped (the
    chain's last head, as a tombstone); tenant_purge removes it.
    """

    schema_name = models.CharField(max_length=63, primary_key=True)
    head_seq = models.BigIntegerField()
    head_hash = models.CharField(max_length=64)
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "audit_chain_anchor"
