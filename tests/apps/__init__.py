"""Small Django apps used as fixtures by the tests."""
