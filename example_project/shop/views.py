"""Views: place an order, read its status."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from . import actors
from .models import Order


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Place an order from a JSON body ``{"email": ..., "items": [...]}``."""
    try:
        body = json.loads(request.body)
        email, items = body["email"], body["items"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'expected JSON {"email": ..., "items": [...]}'}, status=400)
    if not isinstance(items, list):
        return JsonResponse({"error": "items must be a list"}, status=400)
    order = actors.place_order(email, items)
    return JsonResponse({"id": order.pk, "status": order.status}, status=201)


@require_GET
def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    """An order's progress, as the actors record it."""
    order = get_object_or_404(Order, pk=order_id)
    return JsonResponse(
        {
            "id": order.pk,
            "status": order.status,
            "total_cents": order.total_cents,
            "thumbnails": order.thumbnails,
            "notified": order.notified,
        }
    )
