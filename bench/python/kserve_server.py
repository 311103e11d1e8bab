"""The KServe v2 server a user would otherwise write: grpcio plus onnxruntime.

Usage: kserve_server.py PORT MODEL_DIR

Serves every `<name>.onnx` in MODEL_DIR under its file stem, implementing ModelInfer (raw and
typed FP32 inputs, raw outputs) with tritonclient's generated protobuf classes. One
InferenceSession per model, run under a lock per model (sessions are thread-safe for run, but
this is what the ONNX Runtime docs suggest for predictable latency, and what such a server
usually does); a thread pool of 16 workers. Tiny models (sigmoid*, tiny*) run on one intra-op
thread, which is fastest for them; the others on ONNX Runtime's default, every core. Prints
"ready" when listening.
"""

import os
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2, service_pb2_grpc

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


class Server(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model_dir):
        self.sessions = {}
        for f in sorted(os.listdir(model_dir)):
            if f.endswith(".onnx"):
                opts = ort.SessionOptions()
                if f.startswith(("sigmoid", "tiny")):
                    opts.intra_op_num_threads = 1
                s = ort.InferenceSession(
                    os.path.join(model_dir, f), opts, providers=["CPUExecutionProvider"]
                )
                self.sessions[f[:-5]] = (s, threading.Lock())

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelInfer(self, request, context):
        entry = self.sessions.get(request.model_name)
        if entry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name}")
        session, lock = entry
        feeds = {}
        for i, t in enumerate(request.inputs):
            dtype = DTYPES[t.datatype]
            if request.raw_input_contents:
                a = np.frombuffer(request.raw_input_contents[i], dtype=dtype)
            else:
                a = np.array(t.contents.fp32_contents, dtype=dtype)
            feeds[t.name] = a.reshape(list(t.shape))
        with lock:
            outs = session.run(None, feeds)
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for o, v in zip(session.get_outputs(), outs):
            response.outputs.add(name=o.name, datatype="FP32", shape=list(v.shape))
            response.raw_output_contents.append(np.ascontiguousarray(v, dtype=np.float32).tobytes())
        return response


def main():
    port, model_dir = sys.argv[1], sys.argv[2]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Server(model_dir), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
