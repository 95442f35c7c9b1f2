"""Evaluate a released EEG2IM model across processes (thin launcher; logic in eeg2im_scale.eval):

    accelerate launch --num_processes 2 --cpu launchers/evaluate.py --config configs/X.yaml --checkpoint RUN_DIR/model
"""

import sys

from eeg2im_scale.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
