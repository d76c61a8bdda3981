"""Entrypoint for `ray job submit`: runs one audit on the cluster the job lands on.

    ray job submit --working-dir . -- python jobs/audit.py --config jobs/configs/cifar10-real.yaml

It takes the same flags as `raypriv audit`; inside a Ray job RAY_ADDRESS is
set, so the audit connects to that cluster instead of starting a local one.
"""

import os
import sys

# With --working-dir the package is in the job's working directory, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raypriv.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["audit", *sys.argv[1:]]))
