"""A plugin that fails at import, as a plugin with a missing dependency would."""

raise ImportError("gateway_broken_adapter needs acme-sdk, which is not installed")
