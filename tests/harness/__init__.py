"""Test and benchmark harness: real processes, network namespaces, a delaying relay, baselines."""
