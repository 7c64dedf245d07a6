"""Does a group stand up to poisoning members? Accuracy, rewards and leaving, per strategy.

One group of 10 members on IID shares of digits and Fashion-MNIST trains with the group
round every runtime runs (``node.federation.round.run_group_round``, Flower in memory),
against a real registry (snapshots checked and stored, members' evaluations reported,
contributions paid by the ledger). 0, 1, 2 or 4 members attack, each kind in turn
(``node.federation.adversary``: label flip, sign flip x10, Gaussian noise, NaN, a huge
example count), under each strategy (FedAvg, FedMedian, FedTrimmedAvg, Krum).

Per run it reports:
- the honest members' mean test accuracy, and the points lost ("lost") against the
  attacker-free run of the same strategy in the same invocation;
- the attackers' share of the tokens the ledger paid;
- how many attackers' updates the round flagged as harmful to the others (and honest
  members wrongly flagged);
- how many attackers (and honest members) the registry quarantined, and the round by
  which every attacker was out of the group (``registry.quarantine``: flagged rounds in
  a row); the group's rounds follow the registry's membership, as a host's would;
- the rounds until most honest members' own policy (``node.runtime.policy.reevaluate``,
  with the evidence their rounds gave, as ``NodeAgent`` keeps it: the group model
  against the best each had alone) would leave the group, or "-" when they stay;
- whether anything crashed, or any honest member's weights stopped being finite.

Writes ``bench/results/poisoning.json`` and prints one table per data set.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from node.federation.adversary import ATTACKS, AdversarialMember, flip_labels
from node.federation.inprocess import InMemoryFederation
from node.federation.round import GroupMember, run_group_round
from node.federation.strategies import STRATEGY_NAMES, set_flower_log_level
from node.learning.learner import Learner
from node.learning.models import build_model
from node.learning.partition import NodeData, PartitionSpec
from node.learning.weights import WeightsSignature
from node.registry_client import RegistryClient
from node.runtime.policy import Leave, PolicyConfig, reevaluate
from registry.server import BackgroundRegistry
from registry.settings import RegistrySettings

RESULTS = Path(__file__).resolve().parent / "results" / "poisoning.json"
GROUP = 10
LOCAL_EPOCHS = 2
WARMUP_EPOCHS = 2
KRUM_ASSUMED_ATTACKERS = 2  # Krum must be told a bound on attackers; it is not told k
log = logging.getLogger("bench.poisoning")


@dataclass
class Run:
    """One configuration's outcome."""

    dataset: str
    strategy: str
    attack: str
    attackers: int
    honest_accuracy: float | None = None
    loss_points: float | None = None
    attacker_share: float | None = None
    paid: float = 0.0
    attackers_flagged: int = 0
    honest_flagged: int = 0
    rounds_to_leave: int | None = None
    attackers_quarantined: int = 0
    honest_quarantined: int = 0
    rounds_to_quarantine: int | None = None  # until the registry had taken every attacker out
    finite: bool = True
    crashed: str | None = None
    seconds: float = 0.0


def _members(
    data: Sequence[NodeData],
    dataset: str,
    attack: str,
    attackers: int,
    clients: Sequence[RegistryClient],
    ids: Sequence[str],
) -> list[GroupMember]:
    members: list[GroupMember] = []
    for i, (share, client, node_id) in enumerate(zip(data, clients, ids, strict=True)):
        if i >= GROUP - attackers:  # attackers last: the host (member 0) is honest
            if attack == "label_flip":
                share = flip_labels(share, seed=i)
            learner = Learner(build_model(dataset, seed=0), share, seed=i, epochs=LOCAL_EPOCHS)
            members.append(AdversarialMember(node_id, learner, attack, seed=i, reporter=client))
        else:
            learner = Learner(build_model(dataset, seed=0), share, seed=i, epochs=LOCAL_EPOCHS)
            members.append(GroupMember(node_id, learner, reporter=client))
    return members


def run_one(
    url: str,
    data: Sequence[NodeData],
    dataset: str,
    strategy: str,
    attack: str,
    attackers: int,
    rounds: int,
) -> Run:
    """One group of ``GROUP`` for ``rounds`` rounds against the registry at ``url``."""
    out = Run(dataset, strategy, attack, attackers)
    started = time.perf_counter()
    domain = f"{dataset[:3]}-{strategy}-{attack.replace('_', '')}-{attackers}"
    ids = [f"{domain}-n{i}" for i in range(GROUP)]
    clients = [RegistryClient(url, retries=2, backoff=0.1) for _ in ids]
    try:
        model = build_model(dataset, seed=0)
        signature = WeightsSignature.of(
            [t.detach().numpy() for t in model.state_dict().values()], list(model.state_dict())
        )
        for node_id, client in zip(ids, clients, strict=True):
            client.register(node_id, f"bench/{node_id}", domain, model_signature=signature)
        gid = (
            clients[0]
            .create_group(
                domain, domain, max_capacity=GROUP, model_signature=signature, aggregation=strategy
            )
            .id
        )
        for client in clients[1:]:
            client.join(gid)
        members = _members(data, dataset, attack, attackers, clients, ids)
        honest = members[: GROUP - attackers]
        options = {"num_malicious_nodes": KRUM_ASSUMED_ATTACKERS} if strategy == "krum" else None
        for member in members:  # as the runtimes do: a local warm-up before the group
            member.learner.train(WARMUP_EPOCHS)
        solo = {m.node_id: m.learner.evaluate("val").accuracy for m in honest}
        weights = members[0].learner.get_weights()  # the group starts from its creator's
        recent: dict[str, list[tuple[float, float]]] = {m.node_id: [] for m in honest}
        attacker_ids = set(ids[GROUP - attackers :])
        for rnd in range(1, rounds + 1):
            result = run_group_round(
                InMemoryFederation(members, strategy=strategy, strategy_options=options),
                weights,
                group_id=gid,
                round_=rnd,
                local_epochs=LOCAL_EPOCHS,
                registry=clients[0],
            )
            weights = result.weights
            out.attackers_flagged += sum(1 for f in result.flagged if f not in recent)
            out.honest_flagged += sum(1 for f in result.flagged if f in recent)
            for e in result.evaluations:  # what NodeAgent.note_round keeps
                if e.member in recent:
                    alone = max(e.own_accuracy or 0.0, solo[e.member])
                    recent[e.member].append((e.accuracies[0], alone))
            leaving = sum(
                isinstance(
                    reevaluate(gid, pairs[-1][0] if pairs else 0.0, [], rnd, PolicyConfig(), pairs),
                    Leave,
                )
                for pairs in recent.values()
            )
            if out.rounds_to_leave is None and leaving > len(honest) / 2:
                out.rounds_to_leave = rnd
            in_group = {n.id for n in clients[0].get_group(gid).members}
            members = [m for m in members if m.node_id in in_group]  # the quarantined are out
            if attackers and out.rounds_to_quarantine is None and not attacker_ids & in_group:
                out.rounds_to_quarantine = rnd
        out.attackers_quarantined = len(attacker_ids - in_group)
        out.honest_quarantined = len(set(ids) - attacker_ids - in_group)
        out.finite = all(np.isfinite(w).all() for w in weights)
        out.honest_accuracy = float(
            np.mean([m.learner.evaluate("test", weights=weights).accuracy for m in honest])
        )
        entries = httpx.get(
            f"{url}/ledger", params={"group_id": gid, "limit": 1000}, timeout=30
        ).json()["data"]
        out.paid = float(sum(e["amount"] for e in entries))
        bad = sum(e["amount"] for e in entries if e["node_id"] in attacker_ids)
        out.attacker_share = bad / out.paid if out.paid > 0 else 0.0
    except Exception as exc:  # a crash is a result here: report it, go on with the rest
        out.crashed = f"{type(exc).__name__}: {exc}"
        log.error("%s crashed:\n%s", domain, traceback.format_exc())
    finally:
        for client in clients:
            client.close()
    out.seconds = time.perf_counter() - started
    return out


def _table(runs: Sequence[Run]) -> list[str]:
    head = (
        f"{'strategy':<14} {'attack':<11} {'k':>2} {'honest acc':>10} {'lost':>6} "
        f"{'att. share':>10} {'flagged a/h':>11} {'out a/h':>7} {'out @':>5} {'leave @':>7} "
        f"{'ok':>3}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        acc = f"{r.honest_accuracy:.3f}" if r.honest_accuracy is not None else "-"
        pts = f"{r.loss_points:+.1f}" if r.loss_points is not None else "-"
        share = f"{r.attacker_share:.1%}" if r.attacker_share is not None else "-"
        leave = str(r.rounds_to_leave) if r.rounds_to_leave is not None else "-"
        gone = str(r.rounds_to_quarantine) if r.rounds_to_quarantine is not None else "-"
        ok = "yes" if r.crashed is None and r.finite else "NO"
        lines.append(
            f"{r.strategy:<14} {r.attack:<11} {r.attackers:>2} {acc:>10} {pts:>6} {share:>10} "
            f"{r.attackers_flagged:>5}/{r.honest_flagged:<5} "
            f"{r.attackers_quarantined:>3}/{r.honest_quarantined:<3} {gone:>5} {leave:>7} {ok:>3}"
        )
    return lines


def main() -> None:
    """Run every configuration, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,fashion")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--attackers", default="0,1,2,4")
    parser.add_argument("--rounds", type=int, default=10, help="Rounds per run (digits).")
    parser.add_argument("--fashion-rounds", type=int, default=6)
    parser.add_argument("--fashion-samples", type=int, default=300, help="Examples per node.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    for name, given, known in (
        ("--strategies", args.strategies, STRATEGY_NAMES),
        ("--attacks", args.attacks, ATTACKS),
        ("--datasets", args.datasets, ("digits", "fashion")),
    ):
        unknown = sorted(set(given.split(",")) - set(known))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    try:
        counts = [int(k) for k in args.attackers.split(",")]
    except ValueError:
        parser.error(f"--attackers: {args.attackers!r} is not a comma-separated list of counts")
    if any(not 0 <= k < GROUP for k in counts):
        parser.error(f"--attackers: each count must be between 0 and {GROUP - 1}")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    set_flower_log_level(logging.ERROR)
    torch.set_num_threads(1)
    strategies = args.strategies.split(",")
    attacks = args.attacks.split(",")
    data_dir = Path(tempfile.mkdtemp(prefix="poisoning-registry-"))
    report: dict[str, Any] = {"group": GROUP, "local_epochs": LOCAL_EPOCHS, "datasets": {}}
    try:
        with BackgroundRegistry(RegistrySettings(data_dir=data_dir)) as registry:
            for dataset in args.datasets.split(","):
                fashion = dataset == "fashion"
                rounds = args.fashion_rounds if fashion else args.rounds
                data = PartitionSpec(
                    dataset=dataset,
                    num_partitions=GROUP,
                    samples_per_node=args.fashion_samples if fashion else None,
                    seed=args.seed,
                ).split()
                runs: list[Run] = []
                for strategy in strategies:
                    clean = run_one(registry.url, data, dataset, strategy, "none", 0, rounds)
                    if 0 in counts:
                        runs.append(clean)
                    for attack in attacks:
                        for k in (k for k in counts if k > 0):
                            run = run_one(registry.url, data, dataset, strategy, attack, k, rounds)
                            if run.honest_accuracy is not None and clean.honest_accuracy:
                                run.loss_points = 100 * (
                                    clean.honest_accuracy - run.honest_accuracy
                                )
                            runs.append(run)
                            print(_table([run])[-1], flush=True)
                print(f"\n{dataset}: {rounds} rounds, group of {GROUP}")
                print("\n".join(_table(runs)), flush=True)
                report["datasets"][dataset] = {"rounds": rounds, "runs": [asdict(r) for r in runs]}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report["machine"] = {"python": platform.python_version(), "torch_threads": 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
