"""``python -m edmgrid``: the ``edmgrid`` command."""

from edmgrid.cli import main

main()
