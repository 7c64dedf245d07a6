"""Registry HTTP throughput against a bare FastAPI ceiling, measured with wrk in one run.

Usage: python bench/registry_throughput.py [--nodes 1000] [--groups 200] [--connections 200]
       [--duration S] [--database-url postgresql://user:pw@host/postgres] [--quick] [--out F]

A population of ``--nodes`` registered nodes in ``--groups`` groups of one domain (node k in
group k mod G, each group with room for twice its share). wrk (one thread, ``--connections``
connections cycling over every node's token) runs on ``--load-core``; the servers run on
``--server-cores`` (taskset; every worker of a multi-worker registry shares that list).
The PostgreSQL server is not pinned: it shares the machine with both.

- ``ping``: a bare FastAPI ``GET /ping`` (uvicorn, 1 worker, access log off): the ceiling,
  measured before and after the registry (their mean is the ceiling).
- ``echo``: the same bare app's ``POST /echo`` with a validated JSON body in a sync
  handler: the framework cost of a heartbeat without any database.
- ``heartbeat``: saturated; ``hb_paced``: each connection pausing so that together they
  offer half the ceiling's rate (the latency a node sees at the target load).
- ``list_groups``: ``GET /groups?domain=…&limit=G`` (every group, one page);
  ``list_groups_304``: the same with ``If-None-Match`` of the ETag the first answer
  carried (a registry without ETags answers in full: the report says so).
- ``join``: migrations, each node moving to the next group in turn (never full).

Configurations: SQLite with 1 worker, and with ``--database-url`` (a role that may create
databases) PostgreSQL with 1 and 2 workers, each in a fresh database dropped afterwards.
Write rate limits count every request (never reached). Throughput is a ratio of the ceiling
(the machine is shared, so absolute figures drift; ratios measured in one run drift less);
the servers' CPU time per request (from /proc) is a second figure other processes barely
disturb. Prints one table per configuration and the targets met; writes JSON to ``--out``;
exits 0 when every target is met. ``--quick``: 1 s runs of 40 nodes in 8 groups, a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from node.addresses import free_port

log = logging.getLogger("bench.registry_throughput")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "registry_throughput.json"
DOMAIN = "digits"
PAGE = 1000  # the registry's largest page
HEARTBEAT_BODY = '{"metrics":{"accuracy":0.9}}'
# Issue 15's targets, as ratios of the bare /ping measured in the same run.
TARGET_RATIOS = {
    "heartbeat": 0.6,
    "list_groups": 0.7,
    "list_groups_304": 0.8,
    "join": 0.2,
}
TARGET_HEARTBEAT_P99_MS = 50.0
TARGET_HEARTBEAT_PACED_SHARE = 0.5  # hb_paced offers half the ceiling's rate
FULL = {"duration": 10.0, "warmup": 2.0, "connections": 200, "nodes": 1000, "groups": 200}
QUICK = {"duration": 1.0, "warmup": 0.0, "connections": 8, "nodes": 40, "groups": 8}
RESULT_MARK = "WRKRESULT "
COUNTING_LIMIT = "100000000/second"  # rate limiting on, and never reached

# Printed by wrk's done() hook: one JSON line with the figures the summary holds.
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"mean_us":%.1f,"p50_us":%d,' ..
    '"p90_us":%d,"p99_us":%d,"max_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"non_2xx":%d}\n',
    "RESULT_MARK", summary.requests, summary.duration, summary.bytes, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
""".replace("RESULT_MARK", RESULT_MARK)

# Cycles through the nodes, so with as many connections as nodes each node has about
# one request in flight, like a real node would.
LUA_HEARTBEAT = r"""
local reqs = {}
local i = 0
init = function(args)
  for k, node in ipairs(NODES) do
    reqs[k] = wrk.format("POST", "/nodes/" .. node[1] .. "/heartbeat",
      {["Authorization"] = "Bearer " .. node[2], ["Content-Type"] = "application/json"},
      HEARTBEAT_BODY)
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
"""

# Node k starts in group (k-1) % G + 1; each of its joins moves it to the next group.
LUA_JOIN = r"""
local reqs = {}
local at = {}
local i = 0
init = function(args)
  for k, node in ipairs(NODES) do
    reqs[k] = {}
    at[k] = (k - 1) % #GROUP_IDS
    for g, gid in ipairs(GROUP_IDS) do
      reqs[k][g] = wrk.format("POST", "/groups/join",
        {["Authorization"] = "Bearer " .. node[2], ["Content-Type"] = "application/json"},
        '{"group_id":' .. gid .. '}')
    end
  end
end
request = function()
  i = i % #reqs + 1
  at[i] = (at[i] + 1) % #GROUP_IDS
  return reqs[i][at[i] + 1]
end
"""

# Paced: each connection waits about PACE_MS (jittered, so the nodes do not beat in
# lockstep) before its next request, offering a fixed load instead of saturating.
LUA_PACED = r"""
delay = function()
  return PACE_MS * (0.5 + math.random())
end
"""

LUA_STATIC = r"""
local req
init = function(args)
  req = wrk.format(METHOD, PATH, HEADERS, BODY)
end
request = function()
  return req
end
"""


@dataclass
class Figures:
    """One wrk run: throughput, latency and errors."""

    name: str
    rps: float
    requests: int
    duration_s: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    timeouts: int
    bytes_per_response: float = 0.0
    server_cpu_s: float = 0.0
    cpu_us_per_req: float = 0.0


# --- the bare ceiling app ------------------------------------------------------------


class Echo(BaseModel):
    """The heartbeat's body shape, for the bare app's POST /echo."""

    model_config = ConfigDict(extra="forbid")
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)


def serve_bare(port: int) -> None:
    """Run the bare FastAPI app (GET /ping, POST /echo) on 127.0.0.1:port."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    # Sync on purpose: like the registry's handlers, it runs in the threadpool.
    @app.post("/echo")
    def echo(body: Echo) -> Echo:
        return body

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- processes -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cmd: Sequence[str], cores: str | None) -> list[str]:
    """`cmd` run on a taskset core list such as "1" or "0-1" (unchanged when None)."""
    return list(cmd) if cores is None else ["taskset", "-c", cores, *cmd]


@contextlib.contextmanager
def server(
    cmd: Sequence[str], *, health_url: str, log_path: Path, timeout: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until `health_url` answers 200, stop it on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIUM_REGISTRY_")}
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def run_wrk(
    name: str,
    url: str,
    lua: str,
    *,
    duration: float,
    connections: int,
    core: str | None,
    workdir: Path,
) -> Figures:
    """Run wrk with a Lua script and return its figures."""
    script = workdir / f"{name}.lua"
    script.write_text(lua + LUA_DONE)
    cmd = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        core,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(line[len(RESULT_MARK) :])
    secs = raw["duration_us"] / 1e6
    return Figures(
        name=name,
        rps=raw["requests"] / secs if secs > 0 else 0.0,
        requests=raw["requests"],
        duration_s=secs,
        mean_ms=raw["mean_us"] / 1000,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        non_2xx=raw["non_2xx"],
        socket_errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"],
        timeouts=raw["timeouts"],
        bytes_per_response=raw["bytes"] / max(raw["requests"], 1),
    )


# --- scenarios -----------------------------------------------------------------------


def lua_str(value: str) -> str:
    """A Lua string literal."""
    return json.dumps(value)  # JSON string escapes are valid Lua escapes for these values


def lua_nodes(nodes: Sequence[tuple[str, str]]) -> str:
    """The NODES table: {id, token} pairs."""
    rows = ",\n".join(f"  {{{lua_str(i)}, {lua_str(t)}}}" for i, t in nodes)
    return f"NODES = {{\n{rows}\n}}\n"


def static_lua(
    method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
) -> str:
    """A script sending one fixed request."""
    all_headers = {**({"Content-Type": "application/json"} if body else {}), **(headers or {})}
    table = ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in all_headers.items())
    return (
        f"METHOD = {lua_str(method)}\nPATH = {lua_str(path)}\nHEADERS = {{{table}}}\n"
        f"BODY = {lua_str(body) if body else 'nil'}\n" + LUA_STATIC
    )


def populate(url: str, n_nodes: int, n_groups: int) -> tuple[list[tuple[str, str]], list[int]]:
    """Register `n_nodes` nodes and create `n_groups` groups of one domain, node k in group
    k mod n_groups, each with room for twice its share; returns (nodes, group ids)."""
    nodes: list[tuple[str, str]] = []
    capacity = 2 * max(1, -(-n_nodes // n_groups))
    with httpx.Client(base_url=url, timeout=30) as client:
        for k in range(n_nodes):
            node_id = f"bench-{k:05d}"
            r = client.post(
                "/nodes/register",
                json={"node_id": node_id, "address": f"127.0.0.1:{20000 + k}", "domain": DOMAIN},
            )
            r.raise_for_status()
            nodes.append((node_id, r.json()["token"]))
        owner = {"Authorization": f"Bearer {nodes[0][1]}"}
        group_ids = []
        for g in range(n_groups):
            r = client.post(
                "/groups",
                headers=owner,
                json={"name": f"bench-{g}", "domain": DOMAIN, "max_capacity": capacity},
            )
            r.raise_for_status()
            group_ids.append(int(r.json()["id"]))
        for k, (_, token) in enumerate(nodes):
            r = client.post(
                "/groups/join",
                headers={"Authorization": f"Bearer {token}"},
                json={"group_id": group_ids[k % n_groups]},
            )
            r.raise_for_status()
    return nodes, group_ids


def check_heartbeats_landed(url: str, nodes: Sequence[tuple[str, str]], since: dt.datetime) -> int:
    """How many nodes show a heartbeat after `since` with the benchmark's metrics."""
    landed = 0
    wanted = {i for i, _ in nodes}
    with httpx.Client(base_url=url, timeout=30) as client:
        for offset in range(0, len(nodes), PAGE):
            r = client.get("/nodes", params={"domain": DOMAIN, "limit": PAGE, "offset": offset})
            r.raise_for_status()
            for node in r.json()["data"]:
                beat = dt.datetime.fromisoformat(node["last_heartbeat"])
                if (
                    node["id"] in wanted
                    and beat >= since
                    and node["metrics"].get("accuracy") == 0.9
                ):
                    landed += 1
    return landed


def etag_of(url: str, path: str) -> tuple[str | None, int | None]:
    """The ETag a GET of `path` answers with, and the status of a second GET sending it
    back in If-None-Match (304 when the registry honours it); (None, None) without one."""
    with httpx.Client(base_url=url, timeout=30) as client:
        first = client.get(path)
        first.raise_for_status()
        etag = first.headers.get("etag")
        if etag is None:
            return None, None
        again = client.get(path, headers={"If-None-Match": etag})
        return etag, again.status_code


# --- PostgreSQL --------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new database on the server of `admin_url` (a role that may create databases),
    dropped on exit; yields its SQLAlchemy URL (psycopg driver)."""
    import psycopg

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"mycelium_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            plain.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
            + "/"
            + name
        )
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- report ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "",
        "git_commit": commit.stdout.strip(),
        "packages": versions,
    }


def print_table(title: str, rows: Sequence[Figures], ceiling: float, ceiling_cpu: float) -> None:
    """One configuration's results as a fixed-width table on stdout."""
    head = (
        f"{'scenario':<16} {'rps':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'non2xx':>7} {'sockerr':>7} {'B/resp':>7} {'cpu us/req':>10} "
        f"{'cpu ratio':>9}"
    )
    print(f"\n{title}")
    print(head)
    print("-" * len(head))
    for f in rows:
        cpu_ratio = ceiling_cpu / f.cpu_us_per_req if f.cpu_us_per_req else 0.0
        print(
            f"{f.name:<16} {f.rps:>9.0f} {f.rps / ceiling:>7.2f} {f.p50_ms:>8.1f} "
            f"{f.p99_ms:>8.1f} {f.max_ms:>8.1f} {f.non_2xx:>7d} {f.socket_errors + f.timeouts:>7d} "
            f"{f.bytes_per_response:>7.0f} {f.cpu_us_per_req:>10.0f} {cpu_ratio:>9.2f}"
        )


def errors_of(f: Figures) -> int:
    """Failed requests of a run: HTTP >= 400, socket errors and timeouts."""
    return f.non_2xx + f.socket_errors + f.timeouts


def targets_of(
    results: dict[str, Figures], ceiling: float, *, landed: int, nodes: int
) -> dict[str, bool]:
    """Which targets one configuration met (ratios of the ceiling measured in the same run)."""
    ratio = {name: f.rps / ceiling for name, f in results.items()}
    met = {
        f"{name}_ratio_ge_{str(goal).replace('.', '_')}": ratio[name] >= goal
        for name, goal in TARGET_RATIOS.items()
    }
    met["hb_paced_p99_lt_50ms"] = results["hb_paced"].p99_ms < TARGET_HEARTBEAT_P99_MS
    met["no_errors"] = all(errors_of(f) == 0 for f in results.values())
    met["heartbeats_landed"] = landed == nodes
    return met


def run_config(
    name: str,
    *,
    args: argparse.Namespace,
    database_url: str | None,
    workers: int,
    ceiling: float,
    measure: Any,
    work: Path,
    server_cores: str | None,
) -> dict[str, Any]:
    """Every registry scenario against one registry (database, workers); its report."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Rate limits count every write but never refuse here (wrk is one address, far over
    # any real budget): what counting costs is part of the figures.
    cmd = [sys.executable, "-m", "registry", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(work / name), "--workers", str(workers), "--log-level", "warning",
           "--no-access-log", "--heartbeat-interval", "600",
           "--rate-limit-per-token", COUNTING_LIMIT,
           "--rate-limit-per-address", COUNTING_LIMIT]  # fmt: skip
    if database_url is not None:
        cmd += ["--database-url", database_url]
    results: dict[str, Figures] = {}
    with server(pinned(cmd, server_cores), health_url=f"{url}/healthz",
                log_path=work / f"{name}.log") as reg:  # fmt: skip
        log.info("%s: registering %d nodes in %d groups", name, args.nodes, args.groups)
        nodes, group_ids = populate(url, args.nodes, args.groups)
        data = lua_nodes(nodes) + f"HEARTBEAT_BODY = {lua_str(HEARTBEAT_BODY)}\n"
        data += "GROUP_IDS = {" + ", ".join(map(str, group_ids)) + "}\n"
        since = dt.datetime.now(dt.UTC)
        pids = server_pids(reg.pid)
        results["heartbeat"] = measure("heartbeat", url, data + LUA_HEARTBEAT, pids)
        landed = check_heartbeats_landed(url, nodes, since)
        offered = TARGET_HEARTBEAT_PACED_SHARE * ceiling
        pace_ms = 1000 * args.connections / offered
        paced = data + f"PACE_MS = {pace_ms:.3f}\n" + LUA_HEARTBEAT + LUA_PACED
        results["hb_paced"] = measure("hb_paced", url, paced, pids)
        path = f"/groups?domain={DOMAIN}&limit={min(args.groups, PAGE)}"
        results["list_groups"] = measure("list_groups", url, static_lua("GET", path), pids)
        etag, revalidated = etag_of(url, path)
        if etag is None:
            log.warning("%s: GET /groups sent no ETag: list_groups_304 measures full answers", name)
        headers = {"If-None-Match": etag} if etag else {}
        lua = static_lua("GET", path, headers=headers)
        results["list_groups_304"] = measure("list_groups_304", url, lua, pids)
        results["join"] = measure("join", url, data + LUA_JOIN, pids)
    met = targets_of(results, ceiling, landed=landed, nodes=len(nodes))
    return {
        "database": "postgresql" if database_url else "sqlite",
        "workers": workers,
        "scenarios": {
            n: {
                **asdict(f),
                "ratio": f.rps / ceiling,
                "cpu_ratio": None,  # filled in by run(), which knows the ceiling's CPU
            }
            for n, f in results.items()
        },
        "etag": etag,
        "if_none_match_status": revalidated,
        "heartbeats_landed": landed,
        "hb_paced_offered_rps": offered,
        "hb_paced_interval_ms": pace_ms,
        "targets_met": met,
        "_figures": results,
    }


def server_pids(pid: int) -> list[int]:
    """`pid` and its children (uvicorn's worker processes when --workers > 1)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [pid, *(int(c) for c in children.read_text().split())]
    return [pid]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The ceiling, then every configuration's scenarios, then the ceiling again."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    cores = os.cpu_count() or 1
    can_pin = cores >= 2 and shutil.which("taskset") is not None
    server_cores = args.server_cores if can_pin else None
    load_core = str(args.load_core) if can_pin else None
    if not can_pin:
        log.warning("fewer than 2 cores or no taskset: server and wrk are not pinned")
    py = sys.executable
    wrk_kw: dict[str, Any] = {
        "duration": args.duration,
        "connections": args.connections,
        "core": load_core,
    }
    started = time.monotonic()
    info = machine_info()
    configs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mycelium-bench-") as tmp:
        work = Path(tmp)

        def measure(name: str, url: str, lua: str, pids: Sequence[int]) -> Figures:
            if args.warmup > 0:
                run_wrk(f"{name}-warmup", url, lua, **{**wrk_kw, "duration": args.warmup},
                        workdir=work)  # fmt: skip
            pids = [p for pid in pids for p in server_pids(pid)]
            cpu_before = sum(cpu_seconds(p) for p in pids)
            fig = run_wrk(name, url, lua, **wrk_kw, workdir=work)
            fig.server_cpu_s = sum(cpu_seconds(p) for p in pids) - cpu_before
            fig.cpu_us_per_req = 1e6 * fig.server_cpu_s / max(fig.requests, 1)
            log.info("%s: %.0f rps, p99 %.1f ms, %.0f server CPU-us/request",
                     name, fig.rps, fig.p99_ms, fig.cpu_us_per_req)  # fmt: skip
            return fig

        bare_port = free_port()
        bare_url = f"http://127.0.0.1:{bare_port}"
        bare_cmd = pinned([py, str(Path(__file__).resolve()), "--serve-bare", str(bare_port)],
                          server_cores)  # fmt: skip

        def measure_bare(suffix: str) -> dict[str, Figures]:
            out = {}
            with server(bare_cmd, health_url=f"{bare_url}/ping", log_path=work / "bare.log") as p:
                out["ping"] = measure(f"ping{suffix}", f"{bare_url}/ping",
                                      static_lua("GET", "/ping"), [p.pid])  # fmt: skip
                if not suffix:
                    lua = static_lua("POST", "/echo", HEARTBEAT_BODY)
                    out["echo"] = measure("echo", bare_url, lua, [p.pid])
            return out

        bare = measure_bare("")
        ceiling_now = bare["ping"].rps
        plan: list[tuple[str, str | None, int]] = [("sqlite-1", None, 1)]
        if args.database_url:
            plan += [(f"postgresql-{w}", args.database_url, w) for w in (1, 2)]
        for name, admin_url, workers in plan:
            with contextlib.ExitStack() as stack:
                db_url = None if admin_url is None else stack.enter_context(
                    postgres_database(admin_url))  # fmt: skip
                configs[name] = run_config(
                    name,
                    args=args,
                    database_url=db_url,
                    workers=workers,
                    ceiling=ceiling_now,
                    measure=measure,
                    work=work,
                    server_cores=server_cores,
                )
        ping_after = measure_bare("_after")["ping"]

    ping = bare["ping"]
    ceiling = statistics.mean([ping.rps, ping_after.rps])
    ceiling_cpu = statistics.mean([ping.cpu_us_per_req, ping_after.cpu_us_per_req])
    ceiling_fig = Figures(**{**asdict(ping), "rps": ceiling, "cpu_us_per_req": ceiling_cpu})
    print(f"\nceiling: bare /ping {ping.rps:.0f} rps before, {ping_after.rps:.0f} after; "
          f"{args.nodes} nodes in {args.groups} groups of one domain, wrk "
          f"{args.connections} connections cycling over the nodes' tokens")  # fmt: skip
    print(f"cores: registry/bare server on {server_cores}, wrk on {load_core}; the "
          "PostgreSQL server is not pinned (it shares both cores)")  # fmt: skip
    all_met: dict[str, bool] = {}
    for name, cfg in configs.items():
        figures: dict[str, Figures] = cfg.pop("_figures")
        # ratios against the mean ceiling (before and after), as printed
        for n, f in figures.items():
            cfg["scenarios"][n]["ratio"] = f.rps / ceiling
            cfg["scenarios"][n]["cpu_ratio"] = (
                ceiling_cpu / f.cpu_us_per_req if f.cpu_us_per_req else None
            )
        cfg["targets_met"] = met = targets_of(
            figures, ceiling, landed=cfg["heartbeats_landed"], nodes=args.nodes
        )
        title = f"{name}: {cfg['database']}, {cfg['workers']} worker(s)"
        if cfg["etag"] is None:
            title += " (no ETag on GET /groups: list_groups_304 got full answers)"
        else:
            title += f" (If-None-Match answered {cfg['if_none_match_status']})"
        rows = [ceiling_fig, bare["echo"], *figures.values()] if name == "sqlite-1" else [
            ceiling_fig, *figures.values()]  # fmt: skip
        print_table(title, rows, ceiling, ceiling_cpu)
        for target, ok in met.items():
            all_met[f"{name}:{target}"] = ok
    elapsed = time.monotonic() - started
    print("\ntargets (ratios of the bare /ping in the same run):")
    for name, cfg in configs.items():
        missed = [t for t, ok in cfg["targets_met"].items() if not ok]
        print(f"  {name:<13} {'all met' if not missed else 'missed: ' + ', '.join(missed)}")
    print(f"took {elapsed:.0f} s; the machine is shared: figures drift run to run")
    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "nodes": args.nodes,
            "groups": args.groups,
            "server_cores": server_cores,
            "load_core": load_core,
            "postgres_server": "not pinned" if args.database_url else None,
            "quick": args.quick,
        },
        "machine": {**info, "loadavg_after": list(os.getloadavg())},
        "ceiling_rps": ceiling,
        "ceiling_cpu_us_per_req": ceiling_cpu,
        "ceiling_runs": {"before": asdict(ping), "after": asdict(ping_after)},
        "echo": {**asdict(bare["echo"]), "ratio": bare["echo"].rps / ceiling},
        "configs": configs,
        "targets": {
            "ratios": TARGET_RATIOS,
            "hb_paced_max_p99_ms": TARGET_HEARTBEAT_P99_MS,
            "met": all_met,
            "all": all(all_met.values()),
        },
        "elapsed_s": elapsed,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, help="seconds per scenario (default 10; quick 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per scenario (default 2; quick 0)")
    p.add_argument("--connections", type=int, help="wrk connections (default 200; quick 8)")
    p.add_argument("--nodes", type=int, help="registered nodes (default 1000; quick 40)")
    p.add_argument("--groups", type=int, help="groups of one domain (default 200; quick 8)")
    p.add_argument("--quick", action="store_true", help="a smoke test: short runs, few nodes")
    p.add_argument(
        "--database-url",
        help="PostgreSQL URL of a role that may create databases (e.g. "
        "postgresql://user:pw@127.0.0.1/postgres): adds PostgreSQL with 1 and 2 workers, each "
        "in a database the benchmark creates and drops",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    p.add_argument("--server-cores", default="1", help="taskset core list of the servers")
    p.add_argument("--load-core", type=int, default=0, help="core wrk runs on")
    p.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.connections < 1 or args.nodes < 1 or args.groups < 1:
        p.error("--connections, --nodes and --groups must be at least 1")
    if args.groups > PAGE:
        p.error(f"--groups must be at most {PAGE} (one page of GET /groups)")
    if args.database_url and not args.database_url.startswith(
        ("postgresql://", "postgresql+psycopg://")
    ):
        p.error("--database-url must be a postgresql:// URL")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 0 when every target is met, 1 otherwise."""
    args = parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if report["targets"]["all"] else 1


if __name__ == "__main__":
    sys.exit(main())
