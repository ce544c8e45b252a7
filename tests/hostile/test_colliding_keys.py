"""Keys that JSON would merge: json.dumps writes 1 and "1" as the same key and the
database keeps the last, so part of the arguments would be lost without a word."""

from __future__ import annotations

import pytest

from taskengine.backend import InvalidTaskArguments
from taskengine.models import Job
from tests import tasks

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "mapping", [{1: "int key", "1": "str key"}, {True: "bool", "true": "str"}, {None: "none", "null": "str"}]
)
def test_an_argument_whose_keys_collide_in_json_is_refused_not_silently_merged(mapping):
    with pytest.raises(InvalidTaskArguments, match="same JSON key"):
        tasks.add.enqueue(mapping, 0)
    assert not Job.objects.exists()


def test_distinct_non_text_keys_are_stored_as_their_json_text():
    result = tasks.add.enqueue({1: "a", 2: "b"}, 0)
    assert Job.objects.get(pk=result.id).args == [{"1": "a", "2": "b"}, 0]
