"""What a user runs: the command line (`cli.py`), the web page (`serve.py`, `web/`) and the
plots (`plots.py`)."""
