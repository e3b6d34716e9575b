"""Job types used by poel-host's tests; installed as a real distribution by tox."""
