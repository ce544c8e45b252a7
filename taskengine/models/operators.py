"""What operators did (the audit trail) and which tenants a user may see."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Now


class OperatorAction(models.Model):
    """Append-only audit record of every operator write, stored in the same
    transaction as the change it describes."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_repr = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    tenant = models.CharField(max_length=64, null=True, blank=True)
    state_before = models.JSONField(null=True, blank=True)
    state_after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "taskengine_operator_action"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["target_type", "target_id"], name="taskengine_audit_target_idx"),
            models.Index(fields=["tenant", "-created_at"], name="taskengine_audit_tenant_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_repr} {self.action} {self.target_type}:{self.target_id}"


class TenantMembership(models.Model):
    """Which tenants a staff user may see and act on. Superusers see every tenant."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="taskengine_tenants")
    tenant = models.CharField(max_length=64)

    class Meta:
        db_table = "taskengine_tenant_membership"
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="taskengine_tenant_membership_uniq")]

    def __str__(self) -> str:
        return f"{self.user} → {self.tenant}"
