"""pytest set-up: tests share 2 cores with other work, so torch uses one thread."""

import torch

torch.set_num_threads(1)
