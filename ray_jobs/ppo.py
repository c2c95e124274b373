"""Entry point for ``ray job submit --working-dir . -- python ray_jobs/ppo.py --config ... --out ...``.

Under a Ray job RAY_ADDRESS is set, so the trainer joins that cluster; run directly, it starts a local one.
Same arguments as ``fgrlhf ppo``.
"""

import argparse
import logging
import sys

from fgrlhf.trainers.ppo import ppo_cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="ray_jobs/ppo.py", description=ppo_cli.__doc__)
    ppo_cli.add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(ppo_cli.main(parser.parse_intermixed_args()))  # overrides before or after --resume
