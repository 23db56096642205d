"""``python -m embserve``: the ``embserve`` command (:mod:`embserve.cli`)."""

import sys

from embserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
