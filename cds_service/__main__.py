"""``python -m cds_service`` serves the API, like ``priorauth-cds serve``."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:] or ["serve"]))
