"""Retraining: TRL SFT / DPO / KTO with PEFT LoRA on the champion, run records and the scheduler."""
