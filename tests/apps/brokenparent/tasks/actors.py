"""Never imported: its package fails first."""
