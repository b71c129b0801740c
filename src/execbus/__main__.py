"""``python -m execbus`` is the ``execbus`` command."""

import sys

from execbus.cli.main import main

sys.exit(main())
