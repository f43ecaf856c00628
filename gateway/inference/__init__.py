"""Edge inference: ONNX models described by their manifests, run beside the telemetry.

`manifest` reads and checks `models/<name>/manifest.yaml`; `rules` is the small expression
language of fallback rules and health conditions; `features` assembles model inputs from
points and item payloads; `session` owns the onnxruntime sessions; `outputs` turns outputs into
readings, grades and alarms; `engine` ties them to the bus, the item intake and a worker thread.
"""
