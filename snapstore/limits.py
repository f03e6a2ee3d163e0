"""Limits and fixed places of libvirt, in one leaf module so settings and
commands can name them without importing what uses them."""
from __future__ import annotations

from pathlib import Path

# libvirt refuses to read a metadata file over 1 MiB (qemuSnapshotLoad and
# qemuCheckpointLoad read each file with a 1 MiB cap).
LIBVIRT_FILE = 1024 * 1024
# A consolidated file of 10,000 snapshots of real shape is ~60 MiB.
STORE_FILE = 256 * 1024 * 1024
# libvirt's RPC cap on one string: no single moment's XML can cross it.
RPC_STRING = 4 * 1024 * 1024
# Where Debian's libvirt installs its RelaxNG schemas (check validates against them).
SCHEMA_DIR = Path("/usr/share/libvirt/schemas")
