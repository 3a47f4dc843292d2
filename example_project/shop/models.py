"""Orders: placed by a view, fulfilled by actors."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """A customer's order.

    ``items`` is a list of ``{"sku": str, "quantity": int, "unit_cents": int}``.
    """

    class Status(models.TextChoices):
        PLACED = "placed", "Placed"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    email = models.EmailField()
    items = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLACED)
    total_cents = models.PositiveIntegerField(null=True, blank=True)
    thumbnails = models.JSONField(default=list, blank=True)
    notified = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Order {self.pk} ({self.status})"
