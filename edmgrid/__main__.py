"""The ``edmgrid`` command (and ``python -m edmgrid``): signals are deferred from its first line,
so that an interrupt while the command line's modules are imported stops it cleanly too."""

from edmgrid.run import interrupts

interrupts.for_process()

from edmgrid.cli import main  # noqa: E402  (after the handlers, see the docstring)

if __name__ == "__main__":
    main()
