"""Losses: Mask2Former set loss, instance-aware pixel contrastive loss, diagnostics."""
