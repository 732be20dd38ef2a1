"""`python -m mmtlab.cli` = `mmtlab`."""

from mmtlab.cli import main

main()
