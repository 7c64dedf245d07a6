"""`restore` takes only its own format: anything else is named, nothing changes, and
numpy's allow_pickle advice never shows."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sim.persist import STATE_KEY
from sim.state import SimConfig
from tests.sim.helpers import Transcript, fingerprint


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def _state(document: object) -> np.ndarray:
    return np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)


def _text(p: Path) -> Path:
    p.write_text("train\nstep\n")
    return p


def _npy(p: Path) -> Path:
    with p.open("wb") as f:  # a path would get .npy appended
        np.save(f, np.arange(3))
    return p


def _pickle(p: Path) -> Path:
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return p


def _object_array(p: Path) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=True, **{STATE_KEY: np.array([{"a": 1}], dtype=object)})
    p.write_bytes(buffer.getvalue())
    return p


def _stranger_member(p: Path) -> Path:
    with zipfile.ZipFile(p, "w") as archive:
        archive.writestr("state.json.npy", b"")
        archive.writestr("evil.pkl", pickle.dumps(object()))
    return p


def _no_state(p: Path) -> Path:
    return _npz(p, w0=np.zeros(3))


def _missing_keys(p: Path) -> Path:
    return _npz(p, **{STATE_KEY: _state({"format": "mycelium-sim/1", "config": {}})})


def _damaged_state(p: Path) -> Path:
    document = {
        key: {} for key in ("config", "schedules", "groups", "group_rounds", "network", "payloads")
    }
    document.update(format="mycelium-sim/1", next_index=0, flood_seq=0, nodes=[])
    return _npz(p, **{STATE_KEY: _state(document)})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_text, "not an .npz (zip) archive"),
        (_npy, "a single .npy array, not an .npz archive"),
        (_pickle, "not an .npz (zip) archive"),
        (_object_array, "is not a saved simulation (an array it holds is not plain data)"),
        (_stranger_member, "it holds 'evil.pkl', not only .npy arrays"),
        (_no_state, f"it has no {STATE_KEY}"),
        (_missing_keys, "is a damaged save: no flood_seq, group_rounds, groups"),
        (_damaged_state, "is a damaged save"),
    ],
)
def test_restore_refuses_what_it_did_not_save(make: object, reason: str, tmp_path: Path) -> None:
    # Prepare
    t = Transcript(SimConfig(nodes=2, samples_per_node=40))
    t.run("train\nshare\nstep")
    before = fingerprint(t.session.sim, tmp_path)
    path = make(tmp_path / "file.npz")  # type: ignore[operator]

    # Execute
    out = t.run(f"restore {path}")

    # Assert: the reason, the usage line, nothing changed
    assert out[0].startswith(f"error: {path} ")
    assert reason in out[0]
    assert out[1] == "usage: restore FILE"
    assert "allow_pickle" not in "\n".join(out)
    assert fingerprint(t.session.sim, tmp_path) == before
