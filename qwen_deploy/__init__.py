"""qwen-deploy: plan and serve dense GQA language models at the best configuration a machine allows."""

__version__ = "0.1.0"
