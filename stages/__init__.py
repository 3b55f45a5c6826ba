"""Stage registry and pipeline composer (mhc_ops.stages)."""
