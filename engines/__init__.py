"""Plain PyTorch / PyAV / NumPy engines. Nothing here imports ComfyUI."""
