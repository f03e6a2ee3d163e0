"""``snapstore daemon``: keep consolidated files in step with libvirt's folders."""
