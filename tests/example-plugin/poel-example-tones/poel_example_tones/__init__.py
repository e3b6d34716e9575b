"""An example Poel plugin: fingerprints of tones, computed in child processes."""

__version__ = "0.1.0"
