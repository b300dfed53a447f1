"""The product tier: the command line, the admin endpoint and dashboard, the demo origin."""
