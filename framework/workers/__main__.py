"""``python -m gz.workers``: the supervisor of a GZ_WORKERS instance, which a service's process
becomes (supervisor.hand_over); not a command to run by hand."""

import sys

from ..logs import configure_logging
from .supervisor import read_plan, supervise

plan = read_plan()
configure_logging(plan.log_level, plan.log_format)
try:
    sys.exit(supervise(plan))
except OSError as error:
    print(f"gz: {plan.service}: {error}", file=sys.stderr)
    sys.exit(1)
