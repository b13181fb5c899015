"""Self-supervised pretraining (tube-masked VideoMAE)."""
