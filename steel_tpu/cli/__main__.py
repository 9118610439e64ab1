"""`python -m steel_tpu.cli`: the same as the `steel-tpu` command."""

import sys

from steel_tpu.cli import main

sys.exit(main())
