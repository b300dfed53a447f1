"""Hardening measurements: what misbehaving clients cost the proxy, beside nginx in the same run."""
