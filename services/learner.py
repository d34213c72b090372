"""Entrypoint: ``python -m services.learner [--config FILE] [--section.key VALUE ...]``."""

import sys

from services.cli import main

if __name__ == "__main__":
    main(["learner", *sys.argv[1:]])
