"""Peer-to-peer training: ``run_peer_training.py --config configs/base.yaml --peers h:p,...``."""

from node.cli.peer import main

if __name__ == "__main__":
    main()
