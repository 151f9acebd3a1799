"""`python -m reconciler` runs the CLI."""

from .cli import main

main()
