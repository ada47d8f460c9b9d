"""Sources, ring buffers, sampling, batching, the pipeline, summaries, events and sinks."""
