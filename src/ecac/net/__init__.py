"""Network adapters; importing this package does not import libp2p (use ``ecac.net.host``)."""
