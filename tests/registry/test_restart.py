"""A registry restart loses nothing: nodes, tokens, groups, reports, models, events."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.registry.helpers import create_group, mlp_snapshot, register
from tests.support.registry_proc import RegistryProcess


def test_restart_loses_nothing(tmp_path: Path, database_url: str | None) -> None:
    # Prepare: state of every kind
    reg = RegistryProcess(tmp_path / "r", database_url=database_url).start()
    with httpx.Client(base_url=reg.url, timeout=10) as c:
        a, ha = register(c)
        b, hb = register(c)
        gid = create_group(c, ha)
        c.post("/groups/join", headers=hb, json={"group_id": gid})
        c.put(f"/groups/{gid}/performance", headers=ha, json={"value": 0.8, "round": 4})
        c.put(f"/groups/{gid}/model", params={"round": 4}, headers=ha, content=mlp_snapshot())
        before_group = c.get(f"/groups/{gid}").json()
        before_events = c.get("/events", params={"limit": 1000}).json()["data"]

    # Execute: stop and start on the same data dir / database
    reg.stop()
    reg2 = RegistryProcess(tmp_path / "r", database_url=database_url, port=reg.port).start()
    try:
        with httpx.Client(base_url=reg2.url, timeout=10) as c:
            after_group = c.get(f"/groups/{gid}").json()
            after_events = c.get("/events", params={"limit": 1000}).json()["data"]
            model = c.get(f"/groups/{gid}/model")
            # tokens still work after the restart
            hb_ok = c.post(f"/nodes/{b}/heartbeat", headers=hb).status_code
            perf = c.put(f"/groups/{gid}/performance", headers=hb, json={"value": 0.4, "round": 5})
    finally:
        reg2.stop()

    # Assert
    assert after_group == before_group
    assert after_events == before_events
    assert model.content == mlp_snapshot() and model.headers["x-model-round"] == "4"
    assert hb_ok == 200 and perf.status_code == 200
    assert {m["id"] for m in after_group["members"]} == {a, b}
