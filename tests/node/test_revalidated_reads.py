"""RegistryClient and viz's fetcher revalidate reads: If-None-Match out, 304 back, and the
answer decoded before is reused until the registry's state changes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from node.registry_client import RegistryClient
from tests.support.registry_proc import RegistryProcess
from viz.snapshot import SnapshotFetcher

Seen = list[tuple[str, str | None, int]]  # (path, If-None-Match sent, status)


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
def http(sqlite_registry: RegistryProcess, seen: Seen) -> Iterator[httpx.Client]:
    """An httpx client that records every GET's path, If-None-Match and status."""

    def record(resp: httpx.Response) -> None:
        if resp.request.method == "GET":
            sent = resp.request.headers.get("if-none-match")
            seen.append((resp.request.url.path, sent, resp.status_code))

    with httpx.Client(base_url=sqlite_registry.url, event_hooks={"response": [record]}) as c:
        yield c


def test_client_reuses_its_answer_on_304_until_a_write(
    sqlite_registry: RegistryProcess, http: httpx.Client, seen: Seen
) -> None:
    # Prepare: a node with a group of its own domain, and a second node to change things
    domain = f"d-{uuid.uuid4().hex[:8]}"
    client = RegistryClient(sqlite_registry.url, client=http)
    client.register(f"rv-{uuid.uuid4().hex[:8]}", "127.0.0.1:1", domain)
    group = client.create_group(f"g-{uuid.uuid4().hex[:8]}", domain, max_capacity=3)
    other = RegistryClient(sqlite_registry.url)
    other.register(f"rv-{uuid.uuid4().hex[:8]}", "127.0.0.1:2", domain)

    # Execute
    groups = client.list_groups()
    detail = client.get_group(group.id)
    nodes = client.list_nodes(domain=domain)
    seen.clear()
    groups_again = client.list_groups()
    detail_again = client.get_group(group.id)
    nodes_again = client.list_nodes(domain=domain)
    revalidated = list(seen)
    other.join(group.id)
    seen.clear()
    groups_after = client.list_groups()
    detail_after = client.get_group(group.id)

    # Assert: each second read sent the tag, got 304 and returned what was decoded before
    assert [(path, sent is not None, status) for path, sent, status in revalidated] == [
        ("/groups", True, 304),
        (f"/groups/{group.id}", True, 304),
        ("/nodes", True, 304),
    ]
    assert groups_again[0] is groups[0] and detail_again is detail and nodes_again is nodes
    # After a join the tags no longer match: new answers, decoded afresh
    assert [status for _, _, status in seen] == [200, 200]
    assert [g.member_count for g in groups_after] == [2] and groups[0].member_count == 1
    assert len(detail_after.members) == 2
    other.close()


def test_viz_fetcher_revalidates_groups_and_nodes(
    sqlite_registry: RegistryProcess, http: httpx.Client, seen: Seen
) -> None:
    # Prepare
    fetcher = SnapshotFetcher(RegistryClient(sqlite_registry.url, client=http))
    first = fetcher.fetch()
    seen.clear()

    # Execute
    second = fetcher.fetch()

    # Assert: the unchanged group and node lists came back as 304s, the snapshot the same
    statuses = {path: status for path, _, status in seen if path in ("/groups", "/nodes")}
    assert statuses == {"/groups": 304, "/nodes": 304}
    assert second.groups == first.groups and second.nodes == first.nodes
