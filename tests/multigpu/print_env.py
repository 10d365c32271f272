"""`python -m tests.multigpu.print_env OUT`: write this process's environment to OUT as JSON
(what a launcher really gave a child it spawned)."""

import json
import os
import sys

if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        json.dump(dict(os.environ), f)
