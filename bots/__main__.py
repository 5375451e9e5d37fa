"""`python -m bots` is the `chatbot` command."""

import sys

from bots.cli import main

sys.exit(main())
