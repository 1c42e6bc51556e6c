"""``python -m lorafleet_serving.installer`` = ``lorafleet-install``."""

import sys

from .cli import main

sys.exit(main())
