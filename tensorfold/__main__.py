"""`python -m tensorfold ...` is the `tensorfold` command (torchrun launches modules this way)."""

from tensorfold.cli import main

main(prog_name="tensorfold")
