"""Entry point for ``ray job submit --working-dir . -- python ray_jobs/paper.py --config ... --out /abs/dir``.

Under a Ray job RAY_ADDRESS is set, so the job joins that cluster; run directly, it starts a local one.
Same arguments as ``fgrlhf paper``; bad input is one ``error:`` line and exit 2, as there.
"""

import argparse
import logging
import sys

from fgrlhf.config import ConfigError
from fgrlhf.data.loading import DataError
from fgrlhf.pipelines import paper_cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="ray_jobs/paper.py", description=paper_cli.__doc__)
    paper_cli.add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(paper_cli.main(parser.parse_intermixed_args()))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
