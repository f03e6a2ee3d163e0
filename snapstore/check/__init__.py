"""`snapstore check`: integrity of both layouts, and safe repair (DESIGN §6).

findings.py  Finding, Report, exit codes     scan.py    the checks of one domain
schema.py    libvirt's RNG schemas            disks.py   internal snapshots vs images
repair.py    the safe repairs                 run.py     every domain, then repair
"""
