"""Orders in the admin."""

from __future__ import annotations

from django.contrib import admin

from .models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "email", "status", "total_cents", "created_at"]
    list_filter = ["status"]
