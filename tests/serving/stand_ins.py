"""Stand-ins for TF Serving in tests: TF Serving itself has no binary on PyPI or Debian.

`grpc_prediction_service` is a real gRPC server speaking tensorflow-serving-api's
PredictionService (the same service definition and protos TF Serving serves), and
`rest_prediction_service` a real HTTP server speaking TF Serving's REST predict API. Both
run one SavedModel signature with `SignatureRunner` (TF Serving's way: MetaGraph, session,
tensors by name) and answer as TF Serving does: INVALID_ARGUMENT / HTTP 400 with
{"error": ...} for a request that does not fit (or that the graph's checks refuse),
NOT_FOUND / HTTP 404 for an unknown model.
Both bind port 0 and report the port the OS gave them, so tests never race for a port.
"""

import concurrent.futures
import contextlib
import http.server
import json
import threading

import numpy as np

from serving.signature_runner import InputSpecError, SignatureRunner, refusal_message


def _refusal(runner, inputs):
    """(outputs, None), or (None, reason) for a request TF Serving answers with
    INVALID_ARGUMENT: one that does not fit the signature, or that the graph's own checks
    refuse."""
    import tensorflow as tf

    try:
        return runner(inputs), None
    except InputSpecError as error:
        return None, str(error)
    except tf.errors.InvalidArgumentError as error:
        return None, refusal_message(error)


def _not_found(model):
    return f"Servable not found for request: Latest({model})"


@contextlib.contextmanager
def grpc_prediction_service(saved_model_dir, model_name):
    """Yields "127.0.0.1:<port>" of a PredictionService serving `model_name`."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    from tensorflow_serving.apis.model_pb2 import ModelSpec

    from serving.saved_model import read_meta_graph

    runner = SignatureRunner(saved_model_dir)

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if request.model_spec.name != model_name:
                context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.model_spec.name))
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            outputs, refused = _refusal(runner, inputs)
            if refused is not None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
            response = predict_pb2.PredictResponse(
                model_spec=ModelSpec(name=model_name, signature_name="serving_default"))
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        def GetModelMetadata(self, request, context):
            if request.model_spec.name != model_name:
                context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.model_spec.name))
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in read_meta_graph(saved_model_dir).signature_def.items():
                signatures.signature_def[name].CopyFrom(signature)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model_name
            response.metadata["signature_def"].Pack(signatures)
            return response

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _columns(body):
    """TF Serving's two request formats as {input name: array}."""
    if "inputs" in body:
        inputs = body["inputs"]
        return inputs if isinstance(inputs, dict) else {None: inputs}
    rows = body["instances"]
    if rows and isinstance(rows[0], dict):
        return {name: [row[name] for row in rows] for name in rows[0]}
    return {None: rows}


@contextlib.contextmanager
def rest_prediction_service(saved_model_dir, model_name):
    """Yields "http://127.0.0.1:<port>" of a REST predict endpoint serving `model_name`."""
    runner = SignatureRunner(saved_model_dir)
    (only_input,) = runner.input_tensors if len(runner.input_tensors) == 1 else (None,)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            path = self.path
            prefix = "/v1/models/"
            if not (path.startswith(prefix) and path.endswith(":predict")):
                return self._answer(404, {"error": f"Malformed request: POST {path}"})
            model = path[len(prefix):-len(":predict")].split("/versions/")[0]
            if model != model_name:
                return self._answer(404, {"error": _not_found(model)})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            inputs = {only_input if name is None else name: np.asarray(value)
                      for name, value in _columns(body).items()}
            outputs, refused = _refusal(runner, inputs)
            if refused is not None:
                return self._answer(400, {"error": refused})
            key = "outputs" if "inputs" in body else "predictions"
            if key == "predictions":
                rows = len(next(iter(outputs.values())))
                payload = [{name: value[i].tolist() for name, value in outputs.items()}
                           for i in range(rows)]
            else:
                payload = {name: value.tolist() for name, value in outputs.items()}
            return self._answer(200, {key: payload})

        def log_message(self, *args):  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
