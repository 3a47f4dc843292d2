"""An app whose ``tasks`` package imports a module that does not exist."""
