"""What the benchmarks and the GPU check measure with: MACs, live-tensor memory, fixed cost (`profiling`),
the distillation step timed apart (`distill_timing`), feature extraction's baselines (`feature_baselines`)."""
