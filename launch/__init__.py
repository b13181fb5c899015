"""Run plumbing shared by pretraining and fine-tuning: the `timemae` command, distributed init, launch scripts."""
