"""``python -m stoq``: the ``stoq`` command."""

import sys

from stoq.cli import main

sys.exit(main())
