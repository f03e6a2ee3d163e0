"""Size limits, in one leaf module so settings can name them cheaply."""

# libvirt refuses to read a metadata file over 1 MiB (qemuSnapshotLoad and
# qemuCheckpointLoad read each file with a 1 MiB cap).
LIBVIRT_FILE = 1024 * 1024
# A consolidated file of 10,000 snapshots of real shape is ~60 MiB.
STORE_FILE = 256 * 1024 * 1024
