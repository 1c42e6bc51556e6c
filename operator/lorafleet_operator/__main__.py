"""``python -m lorafleet_operator`` runs the ``lorafleet`` command line."""

import sys

from lorafleet_operator.cli import main

sys.exit(main())
