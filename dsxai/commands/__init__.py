"""Subcommands of the ``dsxai`` command line, one module each (see :mod:`dsxai.cli`)."""
