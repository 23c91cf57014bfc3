"""``python -m incidentledger_client.cli``."""

import sys

from incidentledger_client.cli.app import main

sys.exit(main())
