"""Low-level compute under the engine: the array module (NumPy, or CuPy on a GPU), direct
BLAS calls and elementwise threads. It imports nothing else of barenet."""
