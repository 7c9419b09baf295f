"""Data shipped with the package: the sample training set, the BRIGHT-layout sample, a tokenizer."""
