"""``python -m oodlab`` runs the CLI."""

from oodlab.cli import main

main()
