"""The Gradio Space (`app.py`), shipped in the package so `detailflow-hf space` can write a deployable copy."""
