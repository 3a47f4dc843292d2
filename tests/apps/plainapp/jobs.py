"""Discovered when ``DISCOVER`` names ``jobs``; defines nothing, registers nothing."""
