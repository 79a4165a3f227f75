"""speechllm: connect speech to decoder-only LLMs (Speech-LLaMA, arXiv 2307.03917)."""

__version__ = "0.1.0"
