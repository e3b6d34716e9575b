"""Job types for Poel's benchmark suite; installed as a real distribution so that the
benchmark measures ``poel-host serve`` exactly as users run it."""
