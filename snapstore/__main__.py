import sys

from snapstore import cli

sys.exit(cli.main())
