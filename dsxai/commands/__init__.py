"""Subcommands of the ``dsxai`` command line, one module each (see :mod:`dsxai.cli`)."""
from __future__ import annotations

import argparse
import sys
import warnings

TRUST_HELP = ("unpickle the checkpoint with full pickle, which runs any code a crafted file holds; only for files "
              "you trust (default: only allow-listed model classes are rebuilt)")


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to full pickle loading, shared by every MODEL command."""
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def trust_checkpoint(args: argparse.Namespace) -> bool:
    """Whether ``--trust-checkpoint`` was given; if so, say once on stderr what that means.

    The library's own warning then says the same, so it is silenced to keep one line.
    """
    trust = bool(getattr(args, "trust_checkpoint", False))
    if trust:
        print(f"dsxai {args.command}: warning: --trust-checkpoint: loading {args.model} with full pickle; "
              "a crafted checkpoint can run code", file=sys.stderr)
        warnings.filterwarnings("ignore", message=r"loading .* with full pickle \(trust=True\)")
    return trust
