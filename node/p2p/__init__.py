"""Server-less learning between peers: framed transport, update codecs, P2P rounds, gossip."""
