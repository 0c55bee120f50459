import sys

from mlmlab.cli import main

sys.exit(main())
