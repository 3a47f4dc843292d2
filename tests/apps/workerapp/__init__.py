"""Actors run by the runworkers subprocess tests; they report to Redis.

Import :data:`EVENTS` from here: importing ``actors`` would register its
actors in the importing process.
"""

#: The Redis list the actors append their events to.
EVENTS = "tests:events"
