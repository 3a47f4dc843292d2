"""django_actors: a fast, reliable actor-based background processing engine for Django.

The public API keeps dramatiq's names, so moving a project over is an import
change::

    import django_actors

    @django_actors.actor(max_retries=3)
    def send_welcome_email(user_id): ...

    send_welcome_email.send(42)
"""

from __future__ import annotations

from .actor import Actor, GenericActor, actor
from .broker import Broker, Consumer, MessageProxy, get_broker, set_broker
from .composition import CompositionNotFound, group, pipeline
from .composition import cancel as cancel_composition
from .composition import progress as composition_progress
from .encoder import Encoder, JSONEncoder, PickleEncoder, get_encoder, set_encoder
from .errors import (
    ActorNotFound,
    BrokerConnectionError,
    BrokerError,
    ConnectionClosed,
    ConnectionError,
    ConnectionFailed,
    DecodeError,
    DjangoActorsError,
    DramatiqError,
    MessageTooLarge,
    QueueJoinTimeout,
    QueueNotFound,
    RateLimitExceeded,
    Retry,
)
from .message import Message
from .middleware import Middleware
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorNotFound",
    "Broker",
    "BrokerConnectionError",
    "BrokerError",
    "CompositionNotFound",
    "ConnectionClosed",
    "ConnectionError",
    "ConnectionFailed",
    "Consumer",
    "DecodeError",
    "DjangoActorsError",
    "DramatiqError",
    "Encoder",
    "GenericActor",
    "JSONEncoder",
    "Message",
    "MessageProxy",
    "MessageTooLarge",
    "Middleware",
    "PickleEncoder",
    "QueueJoinTimeout",
    "QueueNotFound",
    "RateLimitExceeded",
    "Retry",
    "Worker",
    "actor",
    "cancel_composition",
    "composition_progress",
    "get_broker",
    "get_encoder",
    "group",
    "pipeline",
    "set_broker",
    "set_encoder",
]
