"""An app with a ``jobs`` module that defines no actor (safe to import in-process)."""
