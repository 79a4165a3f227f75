"""speechllm: connect speech to decoder-only LLMs (Speech-LLaMA, arXiv 2307.03917).

    from speechllm_cli import SpeechModel
    SpeechModel.load("exp/speechllm_whisper").transcribe("a.wav").text
"""

__version__ = "0.1.0"
__all__ = ["SpeechModel"]


def __getattr__(name: str):
    if name == "SpeechModel":  # imported on first use: `import speechllm_cli` stays light for the command line
        from speechllm_cli.infer.model import SpeechModel

        return SpeechModel
    raise AttributeError(f"module 'speechllm_cli' has no attribute {name!r}")
