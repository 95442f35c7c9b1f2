"""Train EEG2IM with DeepSpeed (thin launcher: the command is eeg2im_scale.train.command, the same as `eeg2im train`):

    deepspeed --num_gpus 2 launchers/train.py --config configs/synthetic_tiny.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 2 launchers/train.py --config ...
    deepspeed --hostfile launchers/hostfile launchers/train.py --config ...   # multi-node
"""

import sys

from eeg2im_scale.train.command import main

if __name__ == "__main__":
    sys.exit(main())
