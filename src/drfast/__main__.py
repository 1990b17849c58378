import sys

from drfast.cli import main

sys.exit(main())
