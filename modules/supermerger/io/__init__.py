"""Reading and writing checkpoints: safetensors streaming, weights-only .ckpt, atomic writes."""
