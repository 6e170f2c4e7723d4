"""The CI-sized end-to-end problem lives with the bundled sample (samples/digits)."""
from samples.digits.make import DigitsCNN, digits_arrays, train_fp32, write_problem

__all__ = ["DigitsCNN", "digits_arrays", "train_fp32", "write_problem"]
