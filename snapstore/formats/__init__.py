"""Bytes <-> model for libvirt's per-moment files and consolidated files; no file I/O."""
