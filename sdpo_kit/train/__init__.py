"""Train: stepwise DPO from partitions, one trl.DPOTrainer per step."""
