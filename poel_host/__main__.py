"""``python -m poel_host`` is the same as the ``poel-host`` command."""

import sys

from poel_host.console import main

sys.exit(main())
