"""`python -m multifcl.analysis RUN_DIR ...`: the same as `multifcl analyze RUN_DIR ...`."""

import sys

from multifcl.cli import main

sys.exit(main(["analyze", *sys.argv[1:]]))
