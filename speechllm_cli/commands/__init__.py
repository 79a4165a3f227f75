"""The subcommands of ``speechllm``, one module per recipe stage; speechllm_cli/cli.py registers them on its app."""
