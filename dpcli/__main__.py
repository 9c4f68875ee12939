import sys

from dpcli.cli.commands import main

sys.exit(main())
