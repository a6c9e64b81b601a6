"""``python -m gateway`` is the ``meshgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())
