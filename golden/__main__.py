"""python -m mhc_ops.golden --write DIR: regenerate the frozen fixtures."""

from .fixtures import main

main()
