"""Local ONNX Runtime inference of DeepSeek models."""
