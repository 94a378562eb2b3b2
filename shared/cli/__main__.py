"""`python -m shared.cli ...` and `torchrun -m shared.cli ...`: the same as the `pixlab` command."""

import sys

from shared.cli import main

sys.exit(main())
