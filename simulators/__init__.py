"""The outside world for tests and the demo: simulated devices that can inject faults."""
