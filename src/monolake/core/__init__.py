"""The core tier: runtime, service, server drivers, client, protocol codecs, TLS. No TOML, no proxy."""
