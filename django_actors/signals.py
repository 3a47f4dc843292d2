"""Django signals about messages, sent by the ``DjangoSignals`` middleware.

Every signal is sent with ``sender`` set to the message's :class:`Actor`
(``None`` when the actor is not declared in this process, e.g. an
undecodable message), so a receiver can listen to one actor::

    from django.dispatch import receiver
    from django_actors.signals import message_failed

    @receiver(message_failed, sender=send_welcome_email)
    def alert(sender, message, exception, **kwargs): ...

Keyword arguments, besides ``sender`` and ``broker``:

``message_enqueued``
    ``message`` (:class:`Message`), ``delay`` (milliseconds or ``None``).
    Sent for every enqueue, retries included.
``message_started``
    ``message``: a worker is about to run the actor.
``message_succeeded``
    ``message``, ``result``: the actor returned.
``message_retried``
    ``message`` (the retry as enqueued: ``options["retries"]`` counts the
    attempts so far), ``exception``, ``delay``: the actor raised and the
    Retries middleware scheduled another attempt.
``message_failed``
    ``message``, ``exception`` (may be ``None`` when only a reason is
    known), ``reason`` (text): the message failed for good: retries ran
    out, the exception is one the actor ``throws``, the actor is unknown,
    the payload is undecodable, or it raised and no retry was scheduled.

Receivers run in the thread that sends (the sender's on enqueue, a worker
thread otherwise). An exception in a receiver is logged and does not affect
the message.
"""

from __future__ import annotations

from django.dispatch import Signal

message_enqueued = Signal()
message_started = Signal()
message_succeeded = Signal()
message_retried = Signal()
message_failed = Signal()

__all__ = [
    "message_enqueued",
    "message_failed",
    "message_retried",
    "message_started",
    "message_succeeded",
]
