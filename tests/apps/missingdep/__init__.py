"""An app whose actors module imports a module that does not exist."""
