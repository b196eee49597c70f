import sys

from leukoscreen.cli import main

sys.exit(main())
