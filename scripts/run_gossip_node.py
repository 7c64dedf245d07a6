#!/usr/bin/env python3
"""Run one gossip-learning node: the same as ``mycelium gossip`` (see its ``--help``).

For those used to QuinkGL's ``run_node.py``::

    python scripts/run_gossip_node.py --registry-url http://127.0.0.1:8000 \\
        --node-id alice --host 127.0.0.1 --port 0 --index 0 --nodes 4 \\
        --cycles 50 --data-dir /tmp/alice

It loads only the node package, so it starts faster than ``mycelium``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.cli.gossip import main  # noqa: E402

if __name__ == "__main__":
    main()
