"""Stream a split across ranks (a data-layer check before training):

    torchrun --nproc_per_node 2 launchers/stream.py --config configs/synthetic_tiny.yaml --split test

Each rank prints one JSON line; rank 0 synthesizes the corpus first when the config asks for it.
"""

import sys

from eeg2im_scale.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
