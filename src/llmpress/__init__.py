"""llmpress: compress, run, evaluate, benchmark and card Llama-family models on your own machine."""
__version__ = "0.1.0"
