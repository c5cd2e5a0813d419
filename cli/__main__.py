"""`python -m szoq_cli ...` (also the entry for `torchrun -m szoq_cli mask build ...`)."""

from .app import main

main()
