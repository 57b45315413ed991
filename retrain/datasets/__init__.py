"""Dataset compiler: feedback → leak-free SFT, DPO and KTO snapshots."""
