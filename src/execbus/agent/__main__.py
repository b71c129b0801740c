"""``python -m execbus.agent``: run the guest agent daemon."""

from __future__ import annotations

import sys

from execbus.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
