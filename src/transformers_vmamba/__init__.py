"""VMamba for Hugging Face Transformers."""
