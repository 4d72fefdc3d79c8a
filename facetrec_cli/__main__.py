import sys

from facetrec_cli import main

sys.exit(main())
