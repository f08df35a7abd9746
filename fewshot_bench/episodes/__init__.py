"""Episodes sampled from a task's class pools, and the label-free view a method gets."""
