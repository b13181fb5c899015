"""Models: pure nn.Modules and their builders (no argparse, no DeepSpeed)."""
