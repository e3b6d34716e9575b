"""An example Poel plugin: a record's audio fingerprinted and split into bands, side by
side in child processes, and both merged into the record, as one workflow."""

__version__ = "0.1.0"
