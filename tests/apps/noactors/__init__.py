"""An app without an actors module (discovery passes over it)."""
