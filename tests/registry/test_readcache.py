"""The pure parts of the read cache: If-None-Match matching, one build per version."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry.readcache import Answer, AnswerCache, ReadVersions, etag_matches, etag_of

TAG = etag_of(b'{"data":[],"count":0}')


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (TAG, True),
        (f"W/{TAG}", True),  # weak comparison (RFC 9110 13.1.2)
        (f'"other", {TAG}', True),
        (f'"other",W/{TAG}  ', True),
        ("*", True),
        ('"other"', False),
        (TAG.strip('"'), False),  # unquoted: not this tag
        ("", False),
        (None, False),
        ("W/", False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert etag_matches(header, TAG) is matches


def test_equal_bodies_get_equal_tags_and_others_differ() -> None:
    assert etag_of(b"abc") == etag_of(b"abc") != etag_of(b"abd")


def test_concurrent_readers_build_once_per_version() -> None:
    # Prepare: a slow build, many readers at once
    cache, versions = AnswerCache(), ReadVersions()
    gate = threading.Event()

    def build() -> Answer:
        gate.wait(5)
        return Answer(200, str(versions.nodes).encode(), None)

    def read() -> bytes:
        return cache.get_or_build("k", lambda: versions.nodes, build).body

    # Execute
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(read) for _ in range(8)]
        gate.set()
        first = {f.result() for f in pending}
    versions.bump(heartbeats_only=True)
    after = read()

    # Assert: eight readers, one build; a bump rebuilds once more
    assert first == {b"0"} and after == b"1"
    assert cache.builds == 2
    assert cache.lookup("k", versions.nodes) is not None
    assert cache.lookup("k", versions.nodes - 1) is None


def test_heartbeat_commits_leave_the_state_version() -> None:
    versions = ReadVersions()
    versions.bump(heartbeats_only=True)
    assert (versions.state, versions.nodes) == (0, 1)
    versions.bump()
    assert (versions.state, versions.nodes) == (1, 2)


def test_a_full_cache_is_emptied_not_grown() -> None:
    cache = AnswerCache(max_entries=3)
    for key in range(10):
        cache.get_or_build(key, lambda: 0, lambda: Answer(200, b"", None))
    assert sum(cache.lookup(k, 0) is not None for k in range(10)) <= 3
