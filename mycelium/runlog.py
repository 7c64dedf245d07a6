"""TensorBoard run logs of a demo: per-node, per-group and network scalars, one step a round."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.runtime.network import InProcessNetwork, RoundStats

__all__ = ["GROUP_TAGS", "NETWORK_TAGS", "NODE_TAGS", "RunLog"]

# Tags are "<metric>/<node or group>", so TensorBoard shows one section per metric with a
# chart per node or group. Steps are rounds (1 = the first round).
NODE_TAGS = ("node_accuracy", "node_loss", "node_group_size", "node_migrations")
GROUP_TAGS = ("group_accuracy", "group_loss", "group_size")
NETWORK_TAGS = ("network/mean_accuracy", "network/groups", "network/migrations")


class RunLog:
    """Writes TensorBoard event files under ``log_dir`` with
    ``torch.utils.tensorboard.SummaryWriter``; call ``write_round`` after every round.

    Per node ``<n>`` (its id, e.g. ``node-003``), per round:
      - ``node_accuracy/<n>``, ``node_loss/<n>``: accuracy (0..1) and mean cross-entropy
        (nats) of the node's current model on its validation split;
      - ``node_group_size/<n>``: members of its group (0 when in none);
      - ``node_migrations/<n>``: its migrations so far (moves from one group to another).
    Per group ``g<id>``, in the rounds it exists:
      - ``group_accuracy/g<id>``: the group model's example-weighted validation accuracy
        over its members (as the group round measured it), when it trained;
      - ``group_loss/g<id>``: the members' mean validation loss, each on the model it holds
        after the round (the group's model);
      - ``group_size/g<id>``: members.
    Network: ``network/mean_accuracy``, ``network/groups``, ``network/migrations`` (total).

    Raises RuntimeError naming the missing package when tensorboard is not installed, and
    OSError when ``log_dir`` cannot be made.
    """

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch without the tensorboard package
            raise RuntimeError(
                "--tensorboard needs the tensorboard package (pip install tensorboard)"
            ) from exc
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write_round(self, net: InProcessNetwork, stats: RoundStats) -> None:
        """Scalars of the round `stats` just ended, at step ``stats.round``."""
        step, add = stats.round, self._writer.add_scalar
        sizes = Counter(a.group_id for a in net.agents if a.group_id is not None)
        losses: dict[str, float] = {}
        total_migrations = 0
        for agent in net.agents:
            evaluation = agent.learner.evaluate("val")
            losses[agent.node_id] = float(evaluation.loss)
            migrations = sum(1 for m in agent.moves if m.from_group is not None)
            total_migrations += migrations
            nid = agent.node_id
            add(f"node_accuracy/{nid}", float(evaluation.accuracy), step)
            add(f"node_loss/{nid}", losses[nid], step)
            size = 0 if agent.group_id is None else sizes[agent.group_id]
            add(f"node_group_size/{nid}", size, step)
            add(f"node_migrations/{nid}", migrations, step)
        for gid, members in sorted(stats.groups.items()):
            add(f"group_size/g{gid}", len(members), step)
            if gid in stats.group_accuracy:
                add(f"group_accuracy/g{gid}", float(stats.group_accuracy[gid]), step)
            member_losses = [losses[m] for m in members if m in losses]
            if member_losses:
                add(f"group_loss/g{gid}", sum(member_losses) / len(member_losses), step)
        add("network/mean_accuracy", stats.mean_accuracy, step)
        add("network/groups", len(stats.groups), step)
        add("network/migrations", total_migrations, step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
