"""The application tier: the proxy (and gateway), the config schema it is built from, observability."""
