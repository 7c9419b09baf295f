"""TPU sizing: slice table (tpu_topologies), ahead-of-time fit report (aot), the scaling table
that runs it per slice (aot_table) and the host-memory settings it and the trainer share."""
