"""The top of the house: the ``luffy`` command line (``cli``), the local supervisor behind
``luffy up`` (``supervisor``, with ``stack``: the commands compose runs too), its live view
(``dashboard``, ``plot``), ``luffy status`` (``status``), offline evaluation (``evaluate``),
the demo's model and task (``demo``) and the ``python -m services.<role>`` entrypoints. All
role logic lives in the role packages; nothing below imports this package."""
