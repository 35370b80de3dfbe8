import sys

from scd_core.cli.main import main

sys.exit(main())
