import django_actors_test_no_such_parent_dependency  # noqa: F401
