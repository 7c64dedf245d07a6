"""Gossip learning inside a group: Cyclon peer sampling plus age-weighted model merging.

Instead of Flower rounds, each member keeps a small partial view of its peers,
maintained by Cyclon (Voulgaris, Gavidia, van Steen 2005): periodically it ages its
view, swaps up to ``shuffle_length`` entries with its oldest neighbour (sending a
fresh entry for itself), and drops a neighbour that does not answer. Every
``period`` seconds it also sends its model (and the model's age: updates seen) to a
random neighbour; the receiver merges it with its own, weighted by age, and trains
a local step on its data (Ormándi, Hegedűs, Jelasity 2013). A cycle in which no peer
can be reached trains a local step instead, so a member alone still learns.

The view logic is pure (``bootstrap_view``, ``start_shuffle``, ``answer_shuffle``,
``merge_view``); ``GossipNode`` is the asyncio face that does the I/O::

    node = GossipNode("n1", "digits", PyTorchModel(net), port=0, training_config=TrainingConfig())
    await node.start()                      # listen, bootstrap from the registry
    task = asyncio.create_task(node.run_continuous((X, y)))
    ...
    await node.stop()

``node.gossip`` gathers this API (model wrappers, topology and aggregation options) in
one import, shaped like QuinkGL's.

The registry still sees the group: with a ``registry`` (``RegistryClient`` or
anything with its methods) a member registers, joins the group, bootstraps its view
from the group's roster and its model from the group's latest snapshot, sends
heartbeats, reports validation accuracy and uploads snapshots, and leaves on stop.

Peers are strangers. A received model passes ``inbound``'s checks (decoded within the
shapes of one's own model, finite) or is refused, logged and counted in
``GossipStats.refused``. Its age claim counts for at most ``max_age_jump`` more than
one's own age. And the round a member reports and uploads snapshots under is its own
count of updates (``GossipNode.updates``: merges plus local epochs), never a claim.

``aggregation="mean"`` is the age-weighted pairwise merge above. A pairwise merge
cannot be robust (the median of two models is their mean), so ``median`` and
``trimmed_mean`` keep the last model of each of the last ``buffer_size`` senders
(``ModelBuffer``) and merge one's own model with them coordinate-wise, unweighted; until
two senders are buffered a member only trains. One slot per sender, so a peer that
sends often still has one vote (a peer posing as many senders is not stopped by this).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from node.addresses import parse_address
from node.errors import (
    ConfigError,
    ConflictError,
    FrameAuthError,
    FrameError,
    PeerRefusedError,
    PeerUnreachableError,
    RegistryClientError,
    RemoteInputError,
)
from node.learning.merge import age_weighted_merge
from node.learning.models import build_model
from node.learning.partition import NodeData
from node.learning.weights import (
    Weights,
    WeightsSignature,
    check_count,
    decode_weights,
    weights_to_bytes,
)
from node.learning.wrappers import (
    ACCURACY,
    VAL_FRACTION,
    LabelledArrays,
    ModelWrapper,
    PyTorchModel,
    TrainingConfig,
    labelled_arrays,
    split_arrays,
)
from node.names import check_domain, check_node_id
from node.p2p.aggregation import MEAN, aggregate, check_aggregation
from node.p2p.auth import (
    DEFAULT_REPLAY_WINDOW_S,
    Ed25519Auth,
    FrameAuth,
    RegistryKeys,
    auth_from_config,
    registry_key_fetch,
)
from node.p2p.codecs import GRADIENTS_TOPK, Codec, DenseCodec, TopKCodec, make_codec
from node.p2p.config import PeerConfig
from node.p2p.discovery import DEFAULT_GOSSIP_CAPACITY, gossip_group_for
from node.p2p.gossip_options import (
    Aggregation,
    CyclonTopology,
    FedAvg,
    RandomTopology,
    Topology,
    TrimmedMean,
)
from node.p2p.inbound import (
    DEFAULT_MAX_AGE_JUMP,
    REFUSED_AGE,
    REFUSED_DOMAIN,
    bounded_age,
    decode_update,
    note_refusal,
    refusal_reason,
)
from node.p2p.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Envelope,
    TransportServer,
    request,
    send,
)

__all__ = [
    "REGISTRY_URL_ENV",
    "DataProvider",
    "Descriptor",
    "GossipNode",
    "GossipRegistry",
    "GossipStats",
    "ModelBuffer",
    "TrainingConfig",
    "answer_shuffle",
    "bootstrap_view",
    "merge_view",
    "start_shuffle",
]

logger = logging.getLogger(__name__)

MODEL = "gossip_model"
SHUFFLE = "cyclon_shuffle"
SHUFFLE_REPLY = "cyclon_reply"
AGE_META = "age"
DOMAIN_META = "domain"
ENTRIES_META = "entries"
# Where a member finds the registry when it is given none.
REGISTRY_URL_ENV = "MYCELIUM_REGISTRY_URL"


# --- Cyclon, pure -------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """A view entry: a peer's id, ``host:port``, and how many cycles old the entry is."""

    node_id: str
    address: str
    age: int = 0

    def to_wire(self) -> list[Any]:
        """Compact msgpack form."""
        return [self.node_id, self.address, self.age]

    @classmethod
    def from_wire(cls, raw: Any) -> Descriptor:
        """Parse ``to_wire``'s form; ValueError when it is something else."""
        if (
            not isinstance(raw, list)
            or len(raw) != 3
            or not isinstance(raw[0], str)
            or not isinstance(raw[1], str)
            or not isinstance(raw[2], int)
        ):
            raise ValueError(f"Not a view entry: {raw!r}")
        parse_address(raw[1])
        return cls(raw[0], raw[1], max(0, raw[2]))


def bootstrap_view(
    candidates: Sequence[Descriptor], self_id: str, view_size: int, rng: random.Random
) -> list[Descriptor]:
    """A first view: up to ``view_size`` distinct random candidates other than oneself."""
    unique = {d.node_id: d for d in candidates if d.node_id != self_id}
    chosen = list(unique.values())
    rng.shuffle(chosen)
    return [replace(d, age=0) for d in chosen[:view_size]]


def start_shuffle(
    view: Sequence[Descriptor], me: Descriptor, shuffle_length: int, rng: random.Random
) -> tuple[Descriptor | None, list[Descriptor], list[Descriptor]]:
    """Begin a Cyclon shuffle: return (target, entries to send, view without the target).

    Ages every entry, picks the oldest as the target, and sends a fresh entry for
    oneself plus ``shuffle_length - 1`` other random entries.
    """
    aged = [replace(d, age=d.age + 1) for d in view]
    if not aged:
        return None, [], []
    target = max(aged, key=lambda d: d.age)
    rest = [d for d in aged if d.node_id != target.node_id]
    others = rng.sample(rest, min(len(rest), shuffle_length - 1))
    return target, [replace(me, age=0), *others], rest


def answer_shuffle(
    view: Sequence[Descriptor],
    received: Sequence[Descriptor],
    self_id: str,
    shuffle_length: int,
    view_size: int,
    rng: random.Random,
) -> tuple[list[Descriptor], list[Descriptor]]:
    """The receiving side: return (entries to send back, the new view)."""
    reply = rng.sample(list(view), min(len(view), shuffle_length))
    return reply, merge_view(view, received, reply, self_id, view_size)


def merge_view(
    view: Sequence[Descriptor],
    received: Sequence[Descriptor],
    sent: Sequence[Descriptor],
    self_id: str,
    view_size: int,
) -> list[Descriptor]:
    """Cyclon's merge: add received entries, first into free slots, then over those sent.

    Entries about oneself are discarded; an entry already in the view keeps the
    younger of the two ages.
    """
    out = {d.node_id: d for d in view}
    replaceable = [d.node_id for d in sent if d.node_id in out]
    for entry in received:
        if entry.node_id == self_id:
            continue
        if entry.node_id in out:
            if entry.age < out[entry.node_id].age:
                out[entry.node_id] = entry
            continue
        if len(out) < view_size:
            out[entry.node_id] = entry
        elif replaceable:
            del out[replaceable.pop(0)]
            out[entry.node_id] = entry
    return list(out.values())


def remove_peer(view: Sequence[Descriptor], node_id: str) -> list[Descriptor]:
    """The view without ``node_id`` (a peer that did not answer)."""
    return [d for d in view if d.node_id != node_id]


# --- the registry, as gossip uses it ------------------------------------------------


class _Member(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...


class _Group(Protocol):
    @property
    def members(self) -> Sequence[_Member]: ...


class _Keyed(Protocol):
    @property
    def public_key(self) -> str | None: ...


class _Snapshot(Protocol):
    @property
    def data(self) -> bytes: ...
    @property
    def round(self) -> int: ...


class GossipRegistry(Protocol):
    """What a gossip member needs of the registry; ``node.registry_client.RegistryClient`` fits."""

    def register(
        self,
        node_id: str,
        address: str,
        domain: str,
        capabilities: Mapping[str, Any] | None = None,
        *,
        public_key: str | None = None,
    ) -> object: ...
    def get_node(self, node_id: str | None = None) -> _Keyed: ...
    def join(self, group_id: int) -> object: ...
    def list_groups(self, *, domain: str | None = None) -> Sequence[Any]: ...
    def create_group(
        self, name: str, domain: str, *, max_capacity: int = ..., join: bool = ..., mode: str = ...
    ) -> Any: ...
    def leave(self) -> int: ...
    def get_group(self, group_id: int) -> _Group: ...
    def heartbeat(self, metrics: Mapping[str, float] | None = None) -> object: ...
    def report_performance(
        self, group_id: int, *, value: float, round: int, num_examples: int = 1, metric: str = ...
    ) -> object: ...
    def upload_model(self, group_id: int, round: int, data: bytes) -> object: ...
    def download_model(self, group_id: int, round: int | None = None) -> _Snapshot | None: ...


# --- the node -----------------------------------------------------------------------


@dataclass
class GossipStats:
    """Counters of one member.

    ``merged``: received models merged in; ``local_epochs``: epochs trained on its own
    data; ``local_only_cycles``: cycles without a reachable peer, spent training locally;
    ``refused``: received inputs refused, by reason (``inbound``'s ``REFUSED_*``);
    ``ages_clamped``: age claims cut down to ``max_age_jump`` above one's own.
    """

    sent: int = 0
    received: int = 0
    merged: int = 0
    local_epochs: int = 0
    local_only_cycles: int = 0
    send_failures: int = 0
    shuffles: int = 0
    dropped_peers: int = 0
    ages_clamped: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class ModelBuffer:
    """The last model received from each of the last ``size`` senders, oldest out first.

    What gossip's robust merges combine with one's own model. A sender that sends
    again replaces its own entry (and becomes the newest), so it never holds more than
    one of the ``size`` slots.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a model buffer needs at least one slot, got {size}")
        self.size = size
        self._models: OrderedDict[str, Weights] = OrderedDict()

    def add(self, sender: str, weights: Weights) -> None:
        """Keep ``weights`` as ``sender``'s latest model, evicting the oldest sender if full."""
        self._models.pop(sender, None)
        self._models[sender] = weights
        while len(self._models) > self.size:
            self._models.popitem(last=False)

    def models(self) -> list[Weights]:
        """The buffered models, oldest sender first."""
        return list(self._models.values())


Arrays = np.ndarray | torch.Tensor
LocalData = NodeData | tuple[Arrays, Arrays]
# What ``run_continuous`` trains on: the project's NodeData (its train and val splits), or
# ``(X, y)`` as NumPy arrays or torch tensors (VAL_FRACTION held out), or a callable
# returning either.
DataProvider = LocalData | Callable[[], LocalData]


@dataclass(frozen=True)
class _Splits:
    train: LabelledArrays
    val: LabelledArrays


def _splits(data_provider: DataProvider, seed: int) -> _Splits:
    """The train and validation arrays of ``data_provider``; ValueError naming a problem."""
    data = data_provider() if callable(data_provider) else data_provider
    if isinstance(data, NodeData):
        return _Splits(
            labelled_arrays(data.train.x, data.train.y), labelled_arrays(data.val.x, data.val.y)
        )
    if not isinstance(data, tuple) or len(data) != 2:
        raise ValueError(
            "data_provider must give (X, y) as NumPy arrays or torch tensors, or NodeData; "
            f"got {type(data).__name__}"
        )
    train, val = split_arrays(labelled_arrays(*data), VAL_FRACTION, seed=seed)
    return _Splits(train, val)


def _registry_from(registry: GossipRegistry | str | None, node_id: str) -> GossipRegistry | None:
    if not isinstance(registry, str):
        return registry
    from node.registry_client import RegistryClient

    return RegistryClient(registry, node_id=node_id)


def _default_auth(node_id: str, registry: GossipRegistry | None) -> FrameAuth:
    if registry is None:
        raise ConfigError(
            f"GossipNode {node_id!r}: gossip frames are signed. Pass auth="
            "SharedSecretAuth(secret) with the same secret on every peer, or a registry "
            f"(registry=URL, or set {REGISTRY_URL_ENV}) so each node registers its own key"
        )
    # A fresh key for this process, registered with the registry at start.
    return Ed25519Auth(Ed25519PrivateKey.generate(), RegistryKeys(registry_key_fetch(registry)))


class _FromEnvironment(enum.Enum):
    """``registry``'s default: the URL in ``MYCELIUM_REGISTRY_URL``, or none when unset."""

    URL = REGISTRY_URL_ENV


_FROM_ENVIRONMENT = _FromEnvironment.URL


@dataclass
class _Registration:
    group_id: int
    registry: GossipRegistry
    reports: int = 0
    last_upload_round: int = -1
    errors: list[str] = field(default_factory=list)


class GossipNode:
    """One member of a gossip-mode group (see the module docstring).

    ``max_age_jump`` bounds how much older than its own a received model's age may
    count; ``aggregation`` (``mean``: age-weighted pairwise; ``median``,
    ``trimmed_mean`` with ``trim_fraction``: robust, over ``buffer_size`` senders)
    chooses the merge. ``GossipNode.from_config`` builds one from the peer config.

    QuinkGL's shape works too: ``GossipNode(node_id, domain, model, port=0,
    training_config=TrainingConfig(...), topology=CyclonTopology(...) | RandomTopology(),
    aggregation=FedAvg() | Median() | TrimmedMean(trim_fraction))``, ``await start()``,
    ``await run_continuous(data, max_cycles=...)``, ``await shutdown()``. ``model`` is a
    ``ModelWrapper`` (``PyTorchModel``, ``KerasModel``) or an ``nn.Module`` (wrapped in
    ``PyTorchModel``). ``registry`` is a ``RegistryClient`` (or anything with its methods),
    a URL, or, by default, the URL in ``MYCELIUM_REGISTRY_URL`` (none when unset; pass
    ``registry=None`` to ignore the variable).

    Every frame is signed and verified with ``auth`` (``node.p2p.auth``); with a
    registry and an ``Ed25519Auth`` the member registers its public key, and peers
    check its frames against it. Without ``auth``: with a registry, a fresh Ed25519 key
    kept in memory for this process; without one, ``ConfigError`` says what to pass.
    Raises ``ValueError`` for inconsistent arguments, ``TypeError`` for a model that is
    neither a ``ModelWrapper`` nor an ``nn.Module``.
    """

    def __init__(
        self,
        node_id: str,
        domain: str,
        model: ModelWrapper | nn.Module,
        port: int = 0,
        training_config: TrainingConfig | None = None,
        *,
        topology: Topology | None = None,
        aggregation: Aggregation | str = MEAN,
        auth: FrameAuth | None = None,
        replay_window_s: float = DEFAULT_REPLAY_WINDOW_S,
        host: str = "127.0.0.1",
        registry: GossipRegistry | str | _FromEnvironment | None = _FROM_ENVIRONMENT,
        group_id: int | None = None,
        bootstrap_peers: Sequence[Descriptor] = (),
        view_size: int = 4,
        shuffle_length: int = 2,
        period: float = 0.2,
        codec: Codec | None = None,
        seed: int = 0,
        report_every: int = 10,
        send_timeout: float = 2.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_age_jump: int = DEFAULT_MAX_AGE_JUMP,
        trim_fraction: float = 0.2,
        buffer_size: int = 4,
        group_capacity: int = DEFAULT_GOSSIP_CAPACITY,
    ) -> None:
        if isinstance(aggregation, FedAvg):
            aggregation = aggregation.mode
        elif not isinstance(aggregation, str):
            choice = aggregation
            aggregation, buffer_size = choice.mode, choice.buffer_size
            if isinstance(choice, TrimmedMean):
                trim_fraction = choice.trim_fraction
        if isinstance(topology, CyclonTopology):
            view_size, shuffle_length = topology.view_size, topology.shuffle_length
        elif isinstance(topology, RandomTopology):
            view_size, shuffle_length = topology.max_peers, 0
        check_node_id(node_id)
        check_domain(domain)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0 (any free port) to 65535, got {port!r}")
        check_aggregation(aggregation, trim_fraction)
        if max_age_jump < 0:
            raise ValueError(f"max_age_jump must be non-negative, got {max_age_jump}")
        if shuffle_length > view_size:
            raise ValueError("shuffle_length must not exceed view_size")
        if isinstance(codec, TopKCodec):
            raise ValueError(
                "gossip sends whole models: use DenseCodec or QuantizeCodec, not top-k"
            )
        if isinstance(registry, _FromEnvironment):
            registry = os.environ.get(REGISTRY_URL_ENV) or None
        self._own_registry = isinstance(registry, str)
        registry = _registry_from(registry, node_id)
        self.node_id = node_id
        self.domain = domain
        self.model: ModelWrapper = (
            PyTorchModel(model, seed=seed) if isinstance(model, nn.Module) else model
        )
        if not isinstance(self.model, ModelWrapper):
            raise TypeError(
                "model must be a ModelWrapper (PyTorchModel, KerasModel, or one with "
                f"get_weights, set_weights, train and evaluate) or an nn.Module, "
                f"got {type(model).__name__}"
            )
        self.topology: Topology = topology or CyclonTopology(view_size, shuffle_length)
        self.training_config = training_config or TrainingConfig()
        self.host = host
        self.registry = registry
        self.group_id = group_id
        self.group_capacity = group_capacity
        self.view_size = view_size
        self.shuffle_length = shuffle_length
        self.period = period
        self.codec = codec or DenseCodec()
        self.report_every = report_every
        self.send_timeout = send_timeout
        self.max_message_bytes = max_message_bytes
        self.seed = seed
        self.max_age_jump = max_age_jump
        self.aggregation = aggregation
        self.trim_fraction = trim_fraction
        self.buffer = ModelBuffer(buffer_size)
        self.rng = random.Random(seed)
        self.view: list[Descriptor] = []
        self.age = 0
        self.stats = GossipStats()
        self.data: _Splits | None = None
        self.signature = WeightsSignature.of(self.model.get_weights())
        self._training_alone = False
        self._bootstrap = list(bootstrap_peers)
        self._model_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._registration: _Registration | None = None
        if auth is None:
            auth = _default_auth(node_id, registry)
        self.auth = auth
        self.server = TransportServer(
            self._handle,
            auth=auth,
            replay_window_s=replay_window_s,
            host=host,
            port=port,
            max_message_bytes=max_message_bytes,
            name=f"gossip {node_id}",
        )

    @classmethod
    def from_config(
        cls,
        config: PeerConfig,
        *,
        node_id: str | None = None,
        model: nn.Module | None = None,
        registry: GossipRegistry | None = None,
        group_id: int | None = None,
        bootstrap_peers: Sequence[Descriptor] = (),
        auth: FrameAuth | None = None,
    ) -> GossipNode:
        """A member set up from the peer config's gossip, training, compression and p2p keys.

        Frames are signed with ``auth``, else as ``auth_from_config`` says: with a
        ``registry``, the Ed25519 key in ``p2p.data_dir``; without, the shared secret.

        Domain: ``data.dataset``; model: ``model`` or the data set's seeded model
        (``training.seed``); listens on ``p2p.host``:``p2p.local_port``; each received
        model is trained ``gossip.local_steps`` epochs with ``training``'s batch size and
        learning rate. The node id is ``node_id``, else ``config.node_id``, else
        ``host:port``. Raises ``ConfigError`` for ``compression.mode: gradients_topk``
        (gossip sends whole models), and when frames cannot be signed (no registry and
        no shared secret; an unusable key or secret file).
        """
        gossip, training = config.gossip, config.training
        if config.compression.mode == GRADIENTS_TOPK:
            raise ConfigError(
                "compression.mode: gossip sends whole models; use none or weights_quantize"
            )
        codec = make_codec(config.compression.mode, bits=config.compression.bits)
        if auth is None:
            auth = auth_from_config(config.p2p, registry=registry)
        name = node_id or config.node_id or f"{config.p2p.host}:{config.p2p.local_port}"
        return cls(
            name,
            config.data.dataset,
            model if model is not None else build_model(config.data.dataset, training.seed),
            config.p2p.local_port,
            TrainingConfig(
                batch_size=training.batch_size,
                epochs=gossip.local_steps,
                learning_rate=training.learning_rate,
            ),
            auth=auth,
            replay_window_s=config.p2p.replay_window_s,
            host=config.p2p.host,
            registry=registry,
            group_id=group_id,
            bootstrap_peers=bootstrap_peers,
            view_size=gossip.view_size,
            shuffle_length=gossip.shuffle_length,
            period=gossip.period_s,
            codec=codec,
            seed=training.seed + config.data.index,
            max_message_bytes=config.p2p.max_message_bytes,
            max_age_jump=gossip.max_age_jump,
            aggregation=gossip.aggregation,
            trim_fraction=gossip.trim_fraction,
            buffer_size=gossip.buffer_size,
            group_capacity=gossip.group_capacity,
        )

    @property
    def updates(self) -> int:
        """This member's own count of updates (merges plus local epochs): its round."""
        return self.stats.merged + self.stats.local_epochs

    @property
    def address(self) -> str:
        """``host:port`` peers reach this member at (after ``start``)."""
        return f"{self.host}:{self.server.port}"

    @property
    def descriptor(self) -> Descriptor:
        """This member's fresh view entry."""
        return Descriptor(self.node_id, self.address, 0)

    # -- lifecycle --

    async def start(self) -> None:
        """Listen; with a registry, register, join, and bootstrap view and model from it.

        Without a ``group_id`` the member joins its domain's gossip group, creating it
        when there is none with room (``node.p2p.discovery.gossip_group_for``, groups of
        ``group_capacity``); ``group_id`` is then the group found.
        """
        await self.server.start()
        candidates = list(self._bootstrap)
        if self.registry is not None:
            registry = self.registry
            public_key = self.auth.public_key if isinstance(self.auth, Ed25519Auth) else None
            await asyncio.to_thread(
                partial(
                    registry.register,
                    self.node_id,
                    self.address,
                    self.domain,
                    public_key=public_key,
                )
            )
            if self.group_id is None:
                self.group_id = await asyncio.to_thread(
                    partial(
                        gossip_group_for, registry, self.domain, max_capacity=self.group_capacity
                    )
                )
            else:
                await asyncio.to_thread(registry.join, self.group_id)
            group_id = self.group_id
            self._registration = _Registration(group_id=group_id, registry=registry)
            group = await asyncio.to_thread(registry.get_group, group_id)
            candidates += [Descriptor(m.id, m.address) for m in group.members]
            snapshot = await asyncio.to_thread(registry.download_model, group_id)
            if snapshot is not None:
                self._adopt_snapshot(snapshot.data, snapshot.round)
        self.view = bootstrap_view(candidates, self.node_id, self.view_size, self.rng)
        logger.info("Gossip %s started at %s with view %s", self.node_id, self.address, self._ids())

    def _adopt_snapshot(self, blob: bytes, age: int) -> None:
        try:
            self.model.set_weights(decode_weights(blob, self.signature))
        except RemoteInputError as exc:
            logger.warning("Gossip %s: the group's snapshot is unusable: %s", self.node_id, exc)
            return
        # The snapshot's round is another member's claim: it counts as an age, bounded.
        self.age = max(self.age, bounded_age(age, self.age, self.max_age_jump))
        logger.info(
            "Gossip %s bootstrapped its model from the snapshot of round %d (age %d)",
            self.node_id,
            age,
            self.age,
        )

    async def stop(self, *, leave: bool = True) -> None:
        """Stop gossiping, leave the group (unless ``leave=False``: a crash) and close the port."""
        self._stopping.set()
        await self.server.stop()
        if leave and self._registration is not None:
            await self._registry_call("leave", self._registration.registry.leave)
        close = getattr(self.registry, "close", None)
        if self._own_registry and callable(close):
            close()
        logger.info("Gossip %s stopped: %s", self.node_id, self.stats)

    async def shutdown(self) -> None:
        """``stop()`` under QuinkGL's name: stop gossiping, leave the group, close the port."""
        await self.stop()

    def _ids(self) -> list[str]:
        return [d.node_id for d in self.view]

    # -- the active loop --

    async def run_continuous(
        self, data_provider: DataProvider, *, max_cycles: int | None = None
    ) -> GossipStats:
        """Gossip until ``stop()`` (or ``max_cycles`` cycles): shuffle, send, report.

        ``data_provider``: ``(X, y)`` (NumPy arrays or torch tensors: ``X`` ``[N, ...]``
        numbers, ``y`` ``[N]`` integer class labels), the project's ``NodeData``, or a
        callable returning either, called once. Of ``(X, y)`` a seeded random
        ``VAL_FRACTION`` (20 %) is held out: the accuracy this member reports (and
        ``evaluate()`` gives) is measured on it; of ``NodeData``, its ``val`` split.
        A cycle in which no peer could be reached trains one pass
        (``training_config.epochs``) on the local data instead, logged once as
        "no peers: training locally" (and "peers found" when one answers again) and
        counted in ``stats.local_only_cycles``. Raises ``ValueError`` naming the problem
        when the data is not usable (X rows != y rows, y not integer labels, empty) or
        does not fit the model (examples of another shape, labels beyond its classes).
        """
        self.data = _splits(data_provider, self.seed)
        await self._check_data_fits_model(self.data.val)
        cycle = 0
        while not self._stopping.is_set() and (max_cycles is None or cycle < max_cycles):
            cycle += 1
            # Jitter keeps members from firing in lockstep.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self.period * self.rng.uniform(0.5, 1.5)
                )
            if self._stopping.is_set():
                break
            # The roster is read on the first cycle and then every report_every cycles, so a
            # member alone does not ask the registry every period.
            roster_due = (cycle - 1) % self.report_every == 0
            if isinstance(self.topology, RandomTopology):
                if roster_due:
                    await self._read_roster()
            else:
                await self._shuffle()
                if not self.view and roster_due:
                    await self._read_roster()
            if await self._gossip_model():
                self._note_peers(found=True)
            else:
                self._note_peers(found=False)
                await self._train_locally()
            if self._registration is not None and cycle % self.report_every == 0:
                await self._report()
        return self.stats

    async def _check_data_fits_model(self, sample: Any) -> None:
        """Score the model once on ``sample`` (``.x``, ``.y``), so data that cannot train it
        fails here, with a ``ValueError`` naming the mismatch, not deep in a training
        thread: inputs of another shape, or labels the model has no class for."""
        labels = int(sample.y.max()) if len(sample.y) else 0
        shape = tuple(sample.x.shape[1:])
        async with self._model_lock:
            try:
                result = await asyncio.to_thread(self.model.evaluate, sample.x, sample.y)
            except Exception as exc:  # the framework's own error for the user's data
                raise ValueError(
                    f"the data does not fit the model (examples of shape {shape}, labels up "
                    f"to {labels}): {type(exc).__name__}: {exc}"
                ) from exc
        if not math.isfinite(float(result.get("loss", 0.0))):
            raise ValueError(
                f"the model's loss on the data is not finite (examples of shape {shape}, "
                f"labels up to {labels}): are there labels beyond the model's classes?"
            )

    def _note_peers(self, *, found: bool) -> None:
        if found and self._training_alone:
            logger.info("Gossip %s: peers found", self.node_id)
        elif not found and not self._training_alone:
            logger.info("Gossip %s: no peers: training locally", self.node_id)
        self._training_alone = not found

    async def _train_locally(self) -> None:
        data = self.data
        if data is None or self._stopping.is_set():
            return
        async with self._model_lock:
            await asyncio.to_thread(
                self.model.train, data.train.x, data.train.y, self.training_config
            )
            self.stats.local_epochs += self.training_config.epochs
            self.stats.local_only_cycles += 1
            self.age += 1

    async def _read_roster(self) -> None:
        """Add the group's other members (from the registry's roster) to the view."""
        reg = self._registration
        if reg is None:
            return
        group = await self._registry_call("get_group", reg.registry.get_group, reg.group_id)
        if group is None:
            return
        known = {d.node_id for d in self.view}
        fresh = [
            Descriptor(m.id, m.address)
            for m in group.members
            if m.id != self.node_id and m.id not in known
        ]
        self.rng.shuffle(fresh)
        self.view = [*self.view, *fresh][: self.view_size]

    def evaluate(self) -> dict[str, float]:
        """``accuracy``, ``loss`` and ``num_examples`` of the current model on the held-out
        validation data (see ``run_continuous``); ``RuntimeError`` before it has data."""
        if self.data is None:
            raise RuntimeError("evaluate() needs the data: call run_continuous first")
        return self.model.evaluate(self.data.val.x, self.data.val.y)

    async def _shuffle(self) -> None:
        target, sent, rest = start_shuffle(
            self.view, self.descriptor, self.shuffle_length, self.rng
        )
        if target is None:
            return
        self.view = rest
        message = Envelope(
            sender=self.node_id,
            kind=SHUFFLE,
            meta={DOMAIN_META: self.domain, ENTRIES_META: [d.to_wire() for d in sent]},
        )
        try:
            reply = await request(
                parse_address(target.address),
                message,
                auth=self.auth,
                timeout=self.send_timeout,
                stats=self.server.stats,
            )
            received = [Descriptor.from_wire(raw) for raw in reply.meta.get(ENTRIES_META, [])]
        except (PeerRefusedError, FrameAuthError, FrameError) as exc:
            self.stats.dropped_peers += 1
            logger.warning(
                "Gossip %s dropped %s from its view: frames not trusted (%s)",
                self.node_id,
                target.node_id,
                exc,
            )
            return
        except (PeerUnreachableError, ValueError) as exc:
            self.stats.dropped_peers += 1
            logger.info("Gossip %s dropped %s from its view: %s", self.node_id, target.node_id, exc)
            return
        self.stats.shuffles += 1
        self.view = merge_view(self.view, received, sent, self.node_id, self.view_size)
        # The target answered: it stays while there is room (else two members, each
        # trading its only entry away, would shuffle their views empty in turn).
        if len(self.view) < self.view_size and target.node_id not in self._ids():
            self.view.append(replace(target, age=0))

    async def _gossip_model(self) -> bool:
        """Send the model to a random peer of the view; whether one took it."""
        if not self.view:
            return False
        target = self.rng.choice(self.view)
        weights = await asyncio.to_thread(self.model.get_weights)
        message = Envelope(
            sender=self.node_id,
            kind=MODEL,
            round=self.age,
            payload=self.codec.encode(weights).to_bytes(),
            meta={AGE_META: self.age, DOMAIN_META: self.domain},
        )
        try:
            await send(
                parse_address(target.address),
                message,
                auth=self.auth,
                timeout=self.send_timeout,
                max_message_bytes=self.max_message_bytes,
                stats=self.server.stats,
            )
            self.stats.sent += 1
            return True
        except PeerUnreachableError as exc:
            self.stats.send_failures += 1
            self.stats.dropped_peers += 1
            self.view = remove_peer(self.view, target.node_id)
            logger.info("Gossip %s dropped %s: %s", self.node_id, target.node_id, exc)
            return False

    # -- receiving --

    def _refuse(self, reason: str, sender: str, error: object) -> None:
        receiver = f"Gossip {self.node_id}"
        note_refusal(self.stats.refused, reason, receiver=receiver, sender=sender, error=error)

    async def _handle(self, envelope: Envelope) -> Envelope | None:
        domain = envelope.meta.get(DOMAIN_META)
        if domain != self.domain:
            self._refuse(REFUSED_DOMAIN, envelope.sender, f"domain {str(domain)[:40]!r}")
            return None
        if envelope.kind == SHUFFLE:
            try:
                received = [
                    Descriptor.from_wire(raw) for raw in envelope.meta.get(ENTRIES_META, [])
                ]
            except ValueError as exc:
                logger.warning(
                    "Gossip %s: bad shuffle from %s: %s", self.node_id, envelope.sender, exc
                )
                return None
            reply, self.view = answer_shuffle(
                self.view, received, self.node_id, self.shuffle_length, self.view_size, self.rng
            )
            return Envelope(
                sender=self.node_id,
                kind=SHUFFLE_REPLY,
                meta={DOMAIN_META: self.domain, ENTRIES_META: [d.to_wire() for d in reply]},
            )
        if envelope.kind == MODEL:
            await self._merge_and_train(envelope)
            return None
        logger.warning("Gossip %s ignored a %r message", self.node_id, envelope.kind)
        return None

    async def _merge_and_train(self, envelope: Envelope) -> None:
        self.stats.received += 1
        data = self.data
        if data is None or self._stopping.is_set():
            return
        sender = envelope.sender
        try:
            claim = check_count(envelope.meta.get(AGE_META, 0), what="age")
        except (RemoteInputError, TypeError, OverflowError) as exc:
            self._refuse(REFUSED_AGE, sender, exc)
            return
        try:
            other = decode_update(self.codec, envelope.payload, self.signature)
        except RemoteInputError as exc:
            self._refuse(refusal_reason(exc), sender, exc)
            return
        async with self._model_lock:
            other_age = bounded_age(claim, self.age, self.max_age_jump)
            if other_age < claim:
                self.stats.ages_clamped += 1
                logger.info(
                    "Gossip %s counted %s's age claim %d as %d",
                    self.node_id,
                    sender,
                    claim,
                    other_age,
                )
            own = await asyncio.to_thread(self.model.get_weights)
            merged = self._merge(own, other, other_age, sender)
            age = self.age
            if merged is not None:
                await asyncio.to_thread(self.model.set_weights, merged)
                self.stats.merged += 1
                age = max(age, other_age)
            config = self.training_config
            if config.epochs:
                await asyncio.to_thread(self.model.train, data.train.x, data.train.y, config)
            self.stats.local_epochs += config.epochs
            self.age = age + 1

    def _merge(self, own: Weights, other: Weights, other_age: int, sender: str) -> Weights | None:
        """The merged model, or None when a robust merge has too few senders yet."""
        if self.aggregation == MEAN:
            merged, _ = age_weighted_merge(own, self.age, other, other_age)
            return merged
        self.buffer.add(sender, other)
        received = self.buffer.models()
        if len(received) < 2:
            return None
        return aggregate([own, *received], None, self.aggregation, self.trim_fraction)

    # -- the registry --

    async def _registry_call(
        self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Call the registry in a thread; failures are logged, never fatal to gossip."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ConflictError as exc:  # e.g. a member stored a newer snapshot: normal in gossip
            logger.info("Gossip %s: registry %s refused: %s", self.node_id, what, exc)
            return None
        except RegistryClientError as exc:  # the registry being away must not stop learning
            logger.warning("Gossip %s: registry %s failed: %s", self.node_id, what, exc)
            if self._registration is not None:
                self._registration.errors.append(f"{what}: {exc}")
            return None

    async def _report(self) -> None:
        reg = self._registration
        if reg is None or self.data is None:
            return
        # Its own count, never a peer's age claim: what the registry sees is this member's.
        own_round = self.updates
        val = await asyncio.to_thread(self.evaluate)
        accuracy = val[ACCURACY]
        await self._registry_call(
            "heartbeat",
            reg.registry.heartbeat,
            {"accuracy": accuracy, "updates": float(own_round)},
        )
        await self._registry_call(
            "report_performance",
            reg.registry.report_performance,
            reg.group_id,
            value=accuracy,
            round=own_round,
            num_examples=len(self.data.val),
        )
        reg.reports += 1
        if own_round > reg.last_upload_round:
            blob = weights_to_bytes(await asyncio.to_thread(self.model.get_weights))
            await self._registry_call(
                "upload_model", reg.registry.upload_model, reg.group_id, own_round, blob
            )
            reg.last_upload_round = own_round

    async def report_now(self) -> None:
        """Send a heartbeat, a performance report and a snapshot right away."""
        await self._report()

    def weights(self) -> list[np.ndarray]:
        """A copy of the member's current weights (the wrapper's order, float32)."""
        return self.model.get_weights()
