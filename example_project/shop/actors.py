"""The shop's actors, discovered by django_actors when the app is ready.

The main job is fulfilling an order (see :func:`fulfil`)::

    fetch_order -> price_order -> save_order -> group(send_email x 2) -> record_notifications

a pipeline whose fourth step is a group (a chord: the last step receives the
list of the group's results). Thumbnails are a group with a completion
callback that receives every member's result. :func:`audit_order` is an
``async def`` actor.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

import django_actors
from django_actors import group, pipeline

from .models import Order

logger = logging.getLogger(__name__)

#: The sales tax applied by :func:`price_order`, in percent.
TAX_PERCENT = 20
THUMBNAIL_SIZES = (64, 256, 1024)


@django_actors.actor(queue_name="orders", max_retries=3, min_backoff=1000)
def fetch_order(order_id: int) -> dict[str, Any]:
    """Mark an order as processing and return what pricing needs."""
    updated = Order.objects.filter(pk=order_id, status=Order.Status.PLACED).update(
        status=Order.Status.PROCESSING
    )
    order = Order.objects.get(pk=order_id)
    if not updated and order.status != Order.Status.PROCESSING:
        logger.info("Order %s is already %s; fetching it anyway.", order_id, order.status)
    return {"id": order.pk, "items": order.items}


@django_actors.actor(queue_name="orders", max_retries=3, min_backoff=1000)
def price_order(order: dict[str, Any]) -> dict[str, Any]:
    """Compute an order's total, tax included, in cents."""
    subtotal = 0
    for item in order["items"]:
        quantity, unit = int(item["quantity"]), int(item["unit_cents"])
        if quantity <= 0 or unit < 0:
            raise ValueError(f"Order {order['id']} has an invalid line: {item!r}.")
        subtotal += quantity * unit
    return {"id": order["id"], "total_cents": subtotal + subtotal * TAX_PERCENT // 100}


@django_actors.actor(queue_name="orders", max_retries=3, min_backoff=1000)
def save_order(priced: dict[str, Any]) -> int:
    """Store the total and mark the order done; return its id."""
    Order.objects.filter(pk=priced["id"]).update(total_cents=priced["total_cents"], status=Order.Status.DONE)
    return int(priced["id"])


@django_actors.actor(queue_name="emails", max_retries=5)
def send_email(kind: str, order_id: int) -> str:
    """Send one of an order's emails (logged here); return its kind."""
    order = Order.objects.get(pk=order_id)
    recipient = order.email if kind == "customer" else "warehouse@example.com"
    logger.info("Email %r for order %s sent to %s.", kind, order_id, recipient)
    return kind


@django_actors.actor(queue_name="emails")
def record_notifications(order_id: int, kinds: list[str]) -> None:
    """The last step of :func:`fulfil`: remember which emails went out.

    Receives the list of the email group's results (the chord).
    """
    Order.objects.filter(pk=order_id).update(notified=kinds)


@django_actors.actor(queue_name="images", time_limit=60_000)
def make_thumbnail(order_id: int, size: int) -> str:
    """Render one thumbnail of an order's receipt; return its file name."""
    return f"order-{order_id}-{size}.png"


@django_actors.actor(queue_name="images")
def thumbnails_ready(order_id: int, names: list[str]) -> None:
    """Completion callback of the thumbnails group: receives every name."""
    Order.objects.filter(pk=order_id).update(thumbnails=names)


@django_actors.actor(queue_name="orders")
async def audit_order(order_id: int) -> str:
    """An async actor: read the order through Django's async ORM."""
    order = await Order.objects.aget(pk=order_id)
    logger.info("Audited order %s: %s, %s cents.", order.pk, order.status, order.total_cents)
    return str(order.status)


def fulfil(order_id: int) -> pipeline:
    """The whole fulfilment workflow of an order, ready to run."""
    emails = group([send_email.message("customer"), send_email.message("warehouse")])
    return pipeline(
        [
            fetch_order.message(order_id),
            price_order.message(),
            save_order.message(),
            emails,
            record_notifications.message(order_id),
        ]
    )


def thumbnails(order_id: int) -> group:
    """A group rendering every thumbnail size, then calling :func:`thumbnails_ready`."""
    members = group([make_thumbnail.message(order_id, size) for size in THUMBNAIL_SIZES])
    members.add_completion_callback(thumbnails_ready.message(order_id), with_results=True)
    return members


def place_order(email: str, items: list[dict[str, Any]]) -> Order:
    """Create an order and start its workflows once the transaction commits.

    Nothing is enqueued if the transaction rolls back.
    """
    with transaction.atomic():
        order = Order.objects.create(email=email, items=items)
        fulfil(order.pk).run_on_commit()
        thumbnails(order.pk).run_on_commit()
        audit_order.send_on_commit(order.pk)
    return order
