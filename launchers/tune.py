"""Select sampler settings of a released EEG2IM model on the val split, across processes (thin
launcher; logic in eeg2im_scale.eval.selection):

    accelerate launch --num_processes 2 --cpu launchers/tune.py --config configs/X.yaml --checkpoint RUN_DIR/model
"""

import sys

from eeg2im_scale.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
