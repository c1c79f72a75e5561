"""Files a user keeps: model files (`modelfile.py`) and the atomic writes that save them."""
