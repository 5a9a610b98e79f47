import sys

from notelm.cli import main

sys.exit(main())
