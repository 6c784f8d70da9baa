"""``python -m pyro_flows`` runs the ``pyro-flows`` command (see :mod:`pyro_flows.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
