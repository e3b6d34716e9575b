"""An example Poel plugin: thumbnails made in the background."""

__version__ = "0.1.0"
