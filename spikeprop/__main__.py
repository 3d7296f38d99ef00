import sys

from spikeprop.cli import main

sys.exit(main())
