"""Lifecycle hooks that misbehave or probe, for poel-host's tests; installed by tox."""
