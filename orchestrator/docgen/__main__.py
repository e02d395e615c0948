"""``python -m orchestrator.docgen``: write the generated reference pages."""

import sys

from orchestrator.docgen import main

sys.exit(main())
