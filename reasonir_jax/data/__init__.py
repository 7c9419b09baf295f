"""Training data: the TFRecord row format, its reader/writer, and the Grain input pipeline."""
