"""The harness: data, baselines, training engine, CLI, benchmarks and reports, built on the library (learners.learner)."""
