"""tritonclient[grpc] from PyPI, unmodified, against an inference node.

Usage: check_kserve.py HOST:PORT TOKEN ONNX_DIR

The node serves `sigmoid` (sigmoid.onnx) and `spindle` (spindle-detector-eeg.onnx). Every output
is compared with Python onnxruntime's on the same inputs. Prints one JSON object.
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2


def main():
    url, token, onnx_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    headers = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url=url)
    out = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "sigmoid_ready": client.is_model_ready("sigmoid", headers=headers),
        "spindle_ready": client.is_model_ready("spindle", headers=headers),
        "missing_ready": client.is_model_ready("no_such_model", headers=headers),
    }
    meta = client.get_model_metadata("spindle", headers=headers, as_json=True)
    out["spindle_inputs"] = [[i["name"], i["datatype"], [int(d) for d in i["shape"]]] for i in meta["inputs"]]
    out["spindle_outputs"] = [[o["name"], o["datatype"]] for o in meta["outputs"]]
    out["server"] = client.get_server_metadata(headers=headers, as_json=True)["name"]

    rng = np.random.default_rng(7)
    sig = ort.InferenceSession(os.path.join(onnx_dir, "sigmoid.onnx"), providers=["CPUExecutionProvider"])
    spindle = ort.InferenceSession(
        os.path.join(onnx_dir, "spindle-detector-eeg.onnx"), providers=["CPUExecutionProvider"]
    )

    # sigmoid, raw (tritonclient's own way): set_data_from_numpy sends raw_input_contents.
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    inp = grpcclient.InferInput("x", [3, 4, 5], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("sigmoid", [inp], outputs=[grpcclient.InferRequestedOutput("y")], headers=headers)
    want = sig.run(None, {"x": x})[0]
    out["sigmoid_raw_max_diff"] = float(np.max(np.abs(result.as_numpy("y") - want)))

    # sigmoid, typed: tritonclient's protobuf messages and stub, with fp32_contents.
    request = service_pb2.ModelInferRequest(model_name="sigmoid")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3, 4, 5])
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    response = client._client_stub.ModelInfer(request, metadata=tuple(headers.items()))
    got = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(3, 4, 5)
    out["sigmoid_typed_max_diff"] = float(np.max(np.abs(got - want)))
    out["sigmoid_typed_raw_outputs"] = len(response.raw_output_contents)

    # spindle: two windows of 30 s at 250 Hz.
    raw = rng.standard_normal((2, 1, 7500)).astype(np.float32)
    spec = rng.standard_normal((2, 15, 7500)).astype(np.float32)
    a = grpcclient.InferInput("raw_signal", list(raw.shape), "FP32")
    a.set_data_from_numpy(raw)
    b = grpcclient.InferInput("spectrogram", list(spec.shape), "FP32")
    b.set_data_from_numpy(spec)
    result = client.infer("spindle", [a, b], headers=headers)
    want = spindle.run(None, {"raw_signal": raw, "spectrogram": spec})
    names = [o.name for o in spindle.get_outputs()]
    out["spindle_max_diff"] = {
        n: float(np.max(np.abs(result.as_numpy(n) - w))) for n, w in zip(names, want)
    }
    out["spindle_shapes"] = {n: list(result.as_numpy(n).shape) for n in names}

    # Errors come back as InferenceServerException with the status and the reason.
    try:
        bad = grpcclient.InferInput("x", [3, 4, 6], "FP32")
        bad.set_data_from_numpy(np.zeros((3, 4, 6), dtype=np.float32))
        client.infer("sigmoid", [bad], headers=headers)
        out["bad_shape"] = "no error"
    except grpcclient.InferenceServerException as e:
        out["bad_shape"] = [e.status(), e.message()]

    stats = client.get_inference_statistics("sigmoid", headers=headers, as_json=True)
    out["sigmoid_inference_count"] = int(stats["model_stats"][0]["inference_count"])
    index = client.get_model_repository_index(headers=headers, as_json=True)
    out["index"] = sorted([m["name"], m.get("version", ""), m.get("state", "")] for m in index["models"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
