"""Running a trained model on audio files: `speechllm infer` and the Python API."""
