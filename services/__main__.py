"""``python -m services`` is the ``luffy`` command."""

from services.cli import main

main()
