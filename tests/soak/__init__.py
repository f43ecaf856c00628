"""`make soak`: the gateway under a mixed workload for a long time, measured from outside."""
