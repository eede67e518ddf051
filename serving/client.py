"""Clients for TF Serving (REST and gRPC) and for `mlflow models serve`.

TF Serving REST (https://www.tensorflow.org/tfx/serving/api_rest):
    POST /v1/models/<model>[/versions/<v>]:predict
    {"signature_name": ..., "instances": [row, ...]}   row format, or
    {"signature_name": ..., "inputs": {name: batch}}  columnar format
    -> {"predictions": ...} / {"outputs": ...}, or {"error": "..."} on failure.
TF Serving gRPC: tensorflow_serving.apis PredictionService.Predict with TensorProtos.
MLflow's scoring server: POST /invocations with the same "instances" / "inputs" JSON
(it accepts TF Serving's formats), -> {"predictions": ...}; GET /ping for health.

Every client returns numpy arrays: one array for a single-output signature, else
{output name: array}. Failures raise a `ServingError` subclass whose message says what
the server refused and why: `BadRequestError` (wrong shape, dtype, signature),
`ModelNotFoundError` (unknown model or version), `ServerUnavailableError` (nothing
answering at the address).
"""

import base64
import json
import re
import time

import numpy as np

REQUEST_FORMATS = ("instances", "inputs")


class ServingError(RuntimeError):
    """A prediction request failed; `status` is the HTTP status or gRPC code name."""

    def __init__(self, message, status=None, detail=None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class BadRequestError(ServingError):
    """The server refused the request: wrong input names, shapes or dtypes."""


class ModelNotFoundError(ServingError):
    """The server has no such model (or version)."""


class ServerUnavailableError(ServingError):
    """Nothing answered at the server's address (or it timed out)."""


# ---------------------------------------------------------------- JSON formats


def _json_value(array):
    """A numpy array as JSON: bytes become TF Serving's {"b64": ...} objects."""
    if array.dtype.kind == "S" or (
        array.dtype == np.object_ and array.size and isinstance(array.flat[0], bytes)
    ):
        encode = np.vectorize(
            lambda value: {"b64": base64.b64encode(value).decode("ascii")}, otypes=[object]
        )
        return encode(array).tolist() if array.ndim else encode(array).item()
    if array.dtype.kind not in "biufU":
        raise TypeError(
            f"Cannot send an array of dtype {array.dtype} as JSON; send numbers, bools, "
            "str or bytes."
        )
    return array.tolist()


def _as_arrays(inputs):
    if isinstance(inputs, dict):
        if not inputs:
            raise ValueError("No inputs given: pass {input name: array}.")
        return {str(name): np.asarray(value) for name, value in inputs.items()}
    return np.asarray(inputs)


def predict_request_body(inputs, request_format="instances", signature_name=None):
    """The JSON body of a TF Serving REST predict request (also what MLflow accepts).

    inputs: one array (a signature with one input) or {input name: array}, batch first.
    request_format: "instances" (row format: one entry per example) or "inputs"
        (columnar: one batch per input name).
    """
    if request_format not in REQUEST_FORMATS:
        raise ValueError(
            f"request_format must be one of {REQUEST_FORMATS}, got {request_format!r}."
        )
    arrays = _as_arrays(inputs)
    if request_format == "inputs":
        if isinstance(arrays, dict):
            payload = {name: _json_value(value) for name, value in arrays.items()}
        else:
            payload = _json_value(arrays)
    elif isinstance(arrays, dict):
        batch_sizes = {
            name: value.shape[0] if value.ndim else None for name, value in arrays.items()
        }
        if len(set(batch_sizes.values())) != 1 or None in batch_sizes.values():
            raise ValueError(
                "The row ('instances') format needs every input batched with the same "
                f"first dimension; got {batch_sizes}. Use request_format='inputs' for "
                "inputs that are not batched alike."
            )
        columns = {name: _json_value(value) for name, value in arrays.items()}
        payload = [
            {name: column[row] for name, column in columns.items()}
            for row in range(next(iter(batch_sizes.values())))
        ]
    else:
        if arrays.ndim == 0:
            raise ValueError("The row ('instances') format needs a batch: an array of ndim >= 1.")
        payload = _json_value(arrays)
    body = {request_format: payload}
    if signature_name is not None:
        body["signature_name"] = signature_name
    return body


def _from_json(value):
    array = np.asarray(value)
    if array.dtype == np.object_ and array.size and isinstance(array.flat[0], dict):
        decode = np.vectorize(lambda item: base64.b64decode(item["b64"]), otypes=[object])
        return decode(array)
    return array


def parse_predict_response(payload):
    """The arrays in a TF Serving (or MLflow) predict response.

    {"predictions": [row, ...]} or {"outputs": batch} -> one array;
    {"predictions": [{name: row}, ...]}, {"predictions": {name: batch}} or
    {"outputs": {name: batch}} -> {name: array}.
    """
    if not isinstance(payload, dict):
        raise ServingError(f"Unexpected predict response (not a JSON object): {payload!r:.300}")
    if "error" in payload:
        raise ServingError(f"The server reported an error: {payload['error']}")
    key = "predictions" if "predictions" in payload else "outputs" if "outputs" in payload else None
    if key is None:
        raise ServingError(
            f"Unexpected predict response: no 'predictions' or 'outputs' in {sorted(payload)}."
        )
    result = payload[key]
    if isinstance(result, dict):
        return {name: _from_json(value) for name, value in result.items()}
    rows_of_named_outputs = (
        isinstance(result, list) and result and isinstance(result[0], dict)
        and "b64" not in result[0]
    )
    if rows_of_named_outputs:
        return {name: _from_json([row[name] for row in result]) for name in result[0]}
    return _from_json(result)


# ---------------------------------------------------------------- HTTP plumbing


# MLflow's scoring server answers a model's refusal with the whole request first:
# "Failed to predict data '<the input, as long as it was>'. \nError: <the reason>".
_MLFLOW_PREDICT_ERROR = re.compile(r"^Failed to predict data '(?P<data>.*)'\. ?\n?Error: "
                                   r"(?P<reason>.*)$", re.DOTALL)
INPUT_ECHO_CHARS = 120


def _shorten(text, head=300, tail=600):
    """The reason first, with at most INPUT_ECHO_CHARS of an echoed input after it."""
    text = text.strip()
    echoed = _MLFLOW_PREDICT_ERROR.match(text)
    if echoed:
        data = " ".join(echoed["data"].split())
        if len(data) > INPUT_ECHO_CHARS:
            data = f"{data[:INPUT_ECHO_CHARS]}... ({len(echoed['data'])} characters)"
        text = f"{echoed['reason'].strip()} (input: {data})"
    return text if len(text) <= head + tail else f"{text[:head]} [...] {text[-tail:]}"


def _server_message(response):
    """The human part of an error response: TF Serving's "error", MLflow's "message",
    FastAPI's "detail", or the body itself."""
    try:
        body = response.json()
    except ValueError:
        return _shorten(response.text)
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if key in body:
                return _shorten(str(body[key]))
    return _shorten(str(body))


class _HttpClient:
    def __init__(self, url, timeout):
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _request(self, method, path, what, **kwargs):
        import requests

        url = f"{self.url}{path}"
        try:
            response = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout as error:
            raise ServerUnavailableError(
                f"{what}: no answer from {url} within {self.timeout} s."
            ) from error
        except requests.ConnectionError as error:
            raise ServerUnavailableError(
                f"{what}: cannot connect to {self.url} ({type(error).__name__}). Is the "
                "server running and listening on that host and port?"
            ) from error
        if response.ok:
            return response
        detail = _server_message(response)
        if response.status_code == 404:
            raise ModelNotFoundError(f"{what}: not found (HTTP 404): {detail}", 404, detail)
        if response.status_code in (400, 422):
            raise BadRequestError(
                f"{what}: the server refused the request (HTTP {response.status_code}): {detail}",
                response.status_code,
                detail,
            )
        raise ServingError(
            f"{what}: HTTP {response.status_code}: {detail}", response.status_code, detail
        )


# ---------------------------------------------------------------- TF Serving REST


class TFServingRestClient(_HttpClient):
    """TF Serving's REST API (`tensorflow_model_server --rest_api_port=8501`).

    >>> client = TFServingRestClient("http://localhost:8501")
    >>> client.predict("image", {"images": batch})["class_ids"]
    """

    def __init__(self, url="http://localhost:8501", timeout=30.0):
        super().__init__(url, timeout)

    @staticmethod
    def model_path(model, version=None):
        if not model or "/" in str(model):
            raise ValueError(f"Invalid model name {model!r}: one non-empty path part.")
        path = f"/v1/models/{model}"
        if version is not None:
            if not str(version).isdigit():
                raise ValueError(f"Invalid version {version!r}: a positive integer or None.")
            path += f"/versions/{int(version)}"
        return path

    def predict(self, model, inputs, version=None, signature_name=None, request_format="instances"):
        body = predict_request_body(inputs, request_format, signature_name)
        what = f"predict on model {model!r} (version {version or 'latest'})"
        try:
            response = self._request(
                "POST", f"{self.model_path(model, version)}:predict", what, json=body
            )
        except ModelNotFoundError as error:
            raise ModelNotFoundError(
                f"{error} -- {self.url} serves no model {model!r}"
                + (f" with version {version}" if version is not None else "")
                + "; TF Serving serves the names given by --model_name or models.config.",
                error.status,
                error.detail,
            ) from None
        return parse_predict_response(response.json())

    def status(self, model, version=None):
        """The model's version states ({"model_version_status": [...]})."""
        what = f"status of model {model!r}"
        return self._request("GET", self.model_path(model, version), what).json()

    def metadata(self, model, version=None):
        """The model's signatures, as TF Serving reads them from the SavedModel."""
        what = f"metadata of model {model!r}"
        return self._request("GET", f"{self.model_path(model, version)}/metadata", what).json()


# ---------------------------------------------------------------- MLflow scoring server


class MlflowServingClient(_HttpClient):
    """`mlflow models serve -m <model uri> -h 127.0.0.1 -p 5000 --env-manager local`.

    It serves one model at /invocations, so there is no model name to pass.
    """

    def __init__(self, url="http://127.0.0.1:5000", timeout=30.0):
        super().__init__(url, timeout)

    def ping(self):
        """True when the server answers /ping with 200; False when nothing answers."""
        try:
            self._request("GET", "/ping", "ping")
        except ServingError:
            return False
        return True

    def wait_until_ready(self, timeout=120.0, process=None, poll_interval=0.5):
        """Poll /ping until the server is up; `process` (a Popen) fails fast if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServerUnavailableError(
                    f"The model server exited with code {process.returncode} before "
                    f"answering {self.url}/ping."
                )
            if self.ping():
                return self
            time.sleep(poll_interval)
        raise ServerUnavailableError(f"{self.url}/ping did not answer within {timeout} s.")

    def predict(self, inputs, request_format="inputs"):
        body = predict_request_body(inputs, request_format)
        response = self._request(
            "POST",
            "/invocations",
            f"predict at {self.url}/invocations",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        return parse_predict_response(response.json())


# ---------------------------------------------------------------- TF Serving gRPC


def grpc_predict_request(model, inputs, version=None, signature_name="serving_default"):
    """A tensorflow_serving PredictRequest for {input name: array}."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    if not isinstance(inputs, dict):
        raise TypeError(
            "gRPC predict needs named inputs, {input name: array}; the names are in the "
            "model's signature (see TFServingGrpcClient.metadata or saved_model_cli)."
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in _as_arrays(inputs).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_predict_outputs(response):
    """{output name: array} from a PredictResponse."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


class TFServingGrpcClient:
    """TF Serving's gRPC PredictionService (`tensorflow_model_server --port=8500`)."""

    def __init__(self, target="localhost:8500", timeout=30.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _call(self, method, request, what):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            detail = error.details()
            name = code.name if code is not None else "UNKNOWN"
            if code == grpc.StatusCode.NOT_FOUND:
                raise ModelNotFoundError(f"{what}: not found: {detail}", name, detail) from error
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise BadRequestError(
                    f"{what}: the server refused the request ({name}): {detail}", name, detail
                ) from error
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerUnavailableError(
                    f"{what}: no gRPC server answering at {self.target} ({name}): {detail}",
                    name,
                    detail,
                ) from error
            hint = (
                f" ({self.target} speaks gRPC but is not TF Serving's PredictionService; "
                "TF Serving's gRPC port is --port, 8500 by default)"
                if code == grpc.StatusCode.UNIMPLEMENTED
                else ""
            )
            raise ServingError(f"{what}: {name}: {detail}{hint}", name, detail) from error

    def predict(self, model, inputs, version=None, signature_name="serving_default"):
        request = grpc_predict_request(model, inputs, version, signature_name)
        what = f"predict on model {model!r} (version {version or 'latest'})"
        outputs = grpc_predict_outputs(self._call(self._stub.Predict, request, what))
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def metadata(self, model, version=None):
        """The model's SignatureDefMap (GetModelMetadata)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = int(version)
        request.metadata_field.append("signature_def")
        response = self._call(self._stub.GetModelMetadata, request, f"metadata of {model!r}")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return signatures

    def close(self):
        self._channel.close()
