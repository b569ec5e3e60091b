"""Pretraining: DINO self-distillation host with spatial plug-ins (needs torch and timm)."""
