"""The serving engine: paged KV cache accounting, scheduling, the model runner and the step loop."""
