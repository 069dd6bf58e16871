"""TSN / TSM / TSM+CBAM / TSM+NL / TSM+W3 (+ AFR) on ResNet-18..101; see docs/ARCHITECTURE.md section 3."""
from w3model.config import ModelConfig
from w3model.model import VideoNet, build_model

__all__ = ["ModelConfig", "VideoNet", "build_model"]
