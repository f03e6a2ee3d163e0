"""snapstore: crash-safe consolidated libvirt snapshot and checkpoint metadata."""

__version__ = "0.1.0"
