"""Entrypoint: ``python -m services.verifier [--config FILE] [--section.key VALUE ...]``."""

import sys

from services.cli import main

if __name__ == "__main__":
    main(["verifier", *sys.argv[1:]])
