"""``python -m multiloc`` is the ``multiloc`` command."""

import sys

from .cli import main

sys.exit(main())
