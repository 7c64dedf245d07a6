"""Save and restore a whole simulation: one ``.npz`` of arrays plus a JSON document, no pickle.

Saved: the config (the data and models are rebuilt from it), the step, the network's
random state, topology, link conditions, counters and messages in flight, every
node's weights and epoch count (which seeds its shuffling), inboxes, floods seen,
groups and schedules. Restoring and continuing prints what never saving would have.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sim.network import Conditions, ConditionsOverride, Counters, Message, Network, Topology
from sim.state import Mirror, Payload, Schedules, SimConfig, SimNode, Simulation

__all__ = ["SAVE_FORMAT", "restore_simulation", "save_simulation"]

SAVE_FORMAT = "mycelium-sim/1"
STATE_KEY = "state.json"


class _Payloads:
    """Payloads shared by several messages and inboxes are written once."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.meta: dict[str, dict[str, Any]] = {}
        self._keys: dict[int, str] = {}

    def key(self, payload: Payload) -> str:
        pid = id(payload)
        if pid not in self._keys:
            key = f"p{len(self._keys)}"
            self._keys[pid] = key
            self.meta[key] = {
                "num_examples": payload.num_examples,
                "origin": payload.origin,
                "flood": payload.flood,
                "tensors": len(payload.weights),
            }
            for j, w in enumerate(payload.weights):
                self.arrays[f"{key}/{j}"] = w
        return self._keys[pid]


def _message_dict(m: Message[Payload], payloads: _Payloads) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "src": m.src,
        "dst": m.dst,
        "kind": m.kind,
        "nbytes": m.nbytes,
        "sent_step": m.sent_step,
        "due_ms": m.due_ms,
        "deliver_step": m.deliver_step,
        "payload": payloads.key(m.payload),
    }


def save_simulation(sim: Simulation, path: Path) -> None:
    """Write ``sim``'s whole state to ``path``."""
    arrays: dict[str, np.ndarray] = {}
    payloads = _Payloads(arrays)
    nodes = []
    for i in sim.alive:
        node = sim.nodes[i]
        for j, w in enumerate(node.learner.get_weights()):
            arrays[f"n{i}/{j}"] = w
        nodes.append(
            {
                "index": i,
                "group": node.group,
                # The learner has no public setter for its epoch count, which seeds
                # its shuffling: continuing identically needs it.
                "epochs_done": node.learner._epochs_done,
                "inbox": [[src, payloads.key(node.inbox[src])] for src in sorted(node.inbox)],
                "seen_floods": sorted(node.seen_floods),
            }
        )
    net = sim.network
    state = {
        "format": SAVE_FORMAT,
        "config": asdict(sim.config),
        "next_index": sim.next_index,
        "flood_seq": sim.flood_seq,
        "schedules": asdict(sim.schedules),
        "groups": sim.groups,
        "group_rounds": sim.group_rounds,
        "nodes": nodes,
        "network": {
            "seed": net.seed,
            "step": net.step,
            "conditions": asdict(net.conditions),
            "links": [[a, b, asdict(o)] for (a, b), o in sorted(net.link_conditions.items())],
            "counters": net.counters.as_dict(),
            "rng": net.rng.bit_generator.state,
            "topology": net.topology.to_dict(),
            "queue": [_message_dict(m, payloads) for m in net.queued()],
            "next_seq": net.next_seq,
        },
        "payloads": payloads.meta,
    }
    arrays[STATE_KEY] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    path.write_bytes(buffer.getvalue())


_STATE_KEYS = frozenset(
    {
        "config",
        "next_index",
        "flood_seq",
        "schedules",
        "groups",
        "group_rounds",
        "nodes",
        "network",
        "payloads",
    }
)
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _check_archive(path: Path) -> None:
    """Refuse, before numpy reads anything, a file that is not a zip of ``.npy`` members
    holding ``state.json``: the message names the file and what it is instead."""
    not_ours = f"{path} is not a saved simulation (`save FILE` writes one)"
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{not_ours}: it is a single .npy array, not an .npz archive")
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(f"{not_ours}: not an .npz (zip) archive")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{not_ours}: a damaged zip archive ({exc})") from exc
    strangers = [n for n in names if not n.endswith(".npy")]
    if strangers:
        raise ValueError(f"{not_ours}: it holds {strangers[0]!r}, not only .npy arrays")
    if f"{STATE_KEY}.npy" not in names:
        raise ValueError(f"{not_ours}: it has no {STATE_KEY}")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    _check_archive(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a bare array, not an .npz archive")
            arrays = {k: npz[k] for k in npz.files}
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy's own message advises allow_pickle=True (object arrays): never pass that on.
        raise ValueError(
            f"{path} is not a saved simulation (an array it holds is not plain data)"
        ) from exc
    if STATE_KEY not in arrays:
        raise ValueError(f"{path} is not a saved simulation")
    try:
        state = json.loads(arrays[STATE_KEY].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a saved simulation (its state is unreadable)") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a saved simulation")
    if state.get("format") != SAVE_FORMAT:
        raise ValueError(f"{path}: unknown format {state.get('format')!r}")
    missing = sorted(_STATE_KEYS - state.keys())
    if missing:
        raise ValueError(f"{path} is a damaged save: no {', '.join(missing)}")
    return state, arrays


def _network(
    state: dict[str, Any], step_ms: float, payloads: dict[str, Payload]
) -> Network[Payload]:
    net: Network[Payload] = Network(
        Topology.from_dict(state["topology"]),
        seed=int(state["seed"]),
        step_ms=step_ms,
        step=int(state["step"]),
        conditions=Conditions(**state["conditions"]),
        link_conditions={(int(a), int(b)): ConditionsOverride(**o) for a, b, o in state["links"]},
        counters=Counters(**state["counters"]),
    )
    net.rng.bit_generator.state = state["rng"]
    net.restore_queue(
        (
            Message(
                seq=int(m["seq"]),
                src=int(m["src"]),
                dst=int(m["dst"]),
                kind=str(m["kind"]),
                nbytes=int(m["nbytes"]),
                sent_step=int(m["sent_step"]),
                due_ms=float(m["due_ms"]),
                deliver_step=int(m["deliver_step"]),
                payload=payloads[m["payload"]],
            )
            for m in state["queue"]
        ),
        int(state["next_seq"]),
    )
    return net


def restore_simulation(path: Path, mirror: Mirror | None = None) -> Simulation:
    """Rebuild a simulation saved by ``save_simulation``; it continues exactly where it was.

    With a ``mirror``, the registry is brought in line: nodes registered, groups
    created and joined, ungrouped nodes out of any group.
    """
    state, arrays = _read(path)
    try:
        return _rebuild(state, arrays, mirror)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"{path} is a damaged save: {type(exc).__name__} {exc}") from exc


def _rebuild(
    state: dict[str, Any], arrays: dict[str, np.ndarray], mirror: Mirror | None
) -> Simulation:
    config = dict(state["config"])
    if "lr" in config:  # saved before the field was named for what it is
        config["learning_rate"] = config.pop("lr")
    sim = Simulation(SimConfig(**config), None, populate=False)
    sim.next_index = int(state["next_index"])
    sim.flood_seq = int(state["flood_seq"])
    sim.schedules = Schedules(**state["schedules"])
    sim.groups = {k: [int(i) for i in v] for k, v in state["groups"].items()}
    sim.group_rounds = {k: int(v) for k, v in state["group_rounds"].items()}
    payloads = {
        key: Payload(
            [arrays[f"{key}/{j}"] for j in range(int(meta["tensors"]))],
            int(meta["num_examples"]),
            int(meta["origin"]),
            None if meta["flood"] is None else int(meta["flood"]),
        )
        for key, meta in state["payloads"].items()
    }
    sim.network = _network(state["network"], sim.config.step_ms, payloads)
    for entry in state["nodes"]:
        index = int(entry["index"])
        learner = sim.make_learner(index)
        learner.set_weights([arrays[f"n{index}/{j}"] for j in range(len(learner.weight_names))])
        learner._epochs_done = int(entry["epochs_done"])
        sim.nodes[index] = SimNode(
            index,
            learner,
            entry["group"],
            {int(src): payloads[key] for src, key in entry["inbox"]},
            {int(f) for f in entry["seen_floods"]},
        )
    if mirror:
        sim.mirror = mirror
        for index in sim.alive:
            mirror.add_node(index)
            if sim.nodes[index].group is None:
                mirror.leave(index)
        for name, members in sim.groups.items():
            mirror.create_group(name)
            for index in members:
                mirror.join(index, name)
    return sim
