"""Tables of the database results backend.

``StoredResult`` holds every keyed record (message results, composition
records, claims); ``ResultSet`` and ``ResultSetMember`` hold the sets that
count finished group members. Expiry times are epoch milliseconds; expired
rows are ignored by reads and deleted by pruning.
"""

from __future__ import annotations

from django.db import models


class StoredResult(models.Model):
    """One record: an encoded value under a key, until ``expires_at``."""

    key = models.CharField(max_length=255, primary_key=True)
    value = models.BinaryField()
    expires_at = models.BigIntegerField(db_index=True)

    class Meta:
        db_table = "django_actors_result"
        verbose_name = "stored result"

    def __str__(self) -> str:
        return self.key


class ResultSet(models.Model):
    """The header of a set: its expiry, refreshed by every add.

    Adding a member locks this row, so concurrent adds to one set are
    serialized and each sees the size that includes its own member.
    """

    key = models.CharField(max_length=255, primary_key=True)
    expires_at = models.BigIntegerField(db_index=True)

    class Meta:
        db_table = "django_actors_result_set"
        verbose_name = "result set"

    def __str__(self) -> str:
        return self.key


class ResultSetMember(models.Model):
    """One integer member of a :class:`ResultSet`."""

    id = models.BigAutoField(primary_key=True)
    set_key = models.CharField(max_length=255)
    member = models.BigIntegerField()

    class Meta:
        db_table = "django_actors_result_set_member"
        verbose_name = "result set member"
        constraints = [
            models.UniqueConstraint(fields=["set_key", "member"], name="django_actors_set_member_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.set_key} {self.member}"
