"""Entrypoint: ``python -m services.generator [--config FILE] [--section.key VALUE ...]``."""

import sys

from services.cli import main

if __name__ == "__main__":
    main(["generator", *sys.argv[1:]])
