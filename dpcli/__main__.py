import sys

from dpcli.cli import main

sys.exit(main())
