import django_actors_test_no_such_module  # noqa: F401
