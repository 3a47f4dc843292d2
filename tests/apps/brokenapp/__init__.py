"""An app whose actors module raises on import."""
