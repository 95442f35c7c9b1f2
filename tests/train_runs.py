"""Several training commands in one launch: ``deepspeed --num_gpus 2 tests/train_runs.py RUNS.json``,
RUNS.json a list of ``{"port": free port, "argv": eeg2im train arguments}``, run in order.

Why: a launcher start-up (~15 s on the 2-core CPU) per run would dominate a test of many tiny runs;
each run still forms and destroys its own process group (``train/run.py``) as a fresh launch does,
on its own port: a rank that re-joined on the last run's port could reach that run's store before
rank 0 had closed it.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from eeg2im_scale.train.command import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("--local_rank", type=int)  # the deepspeed launcher's; each run reads LOCAL_RANK itself
    for run in json.loads(parser.parse_args().runs.read_text()):
        os.environ["MASTER_PORT"] = str(run["port"])
        if main(run["argv"]) != 0:
            sys.exit(f"stopped at: {' '.join(run['argv'])}")
