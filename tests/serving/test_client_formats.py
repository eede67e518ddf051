"""TF Serving's request and response formats, checked against its documented examples
(https://www.tensorflow.org/tfx/serving/api_rest), and the clients' connection errors."""

import concurrent.futures
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving.client import (
    BadRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    ServingError,
    TFServingGrpcClient,
    TFServingRestClient,
    grpc_predict_outputs,
    grpc_predict_request,
    parse_predict_response,
    predict_request_body,
)

# The documented example: three named inputs, two instances.
TAG = np.array(["foo", "bar"])
SIGNAL = np.array([[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]])
SENSOR = np.array([[[1, 2], [3, 4]], [[4, 5], [6, 8]]])


def test_row_format_matches_documented_example():
    body = predict_request_body({"tag": TAG, "signal": SIGNAL, "sensor": SENSOR})
    assert body == {
        "instances": [
            {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
            {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
        ]
    }


def test_columnar_format_matches_documented_example():
    body = predict_request_body(
        {"tag": TAG, "signal": SIGNAL, "sensor": SENSOR}, request_format="inputs",
        signature_name="predict",
    )
    assert body == {
        "signature_name": "predict",
        "inputs": {
            "tag": ["foo", "bar"],
            "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
            "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
        },
    }


def test_single_unnamed_input_and_binary_values():
    assert predict_request_body(np.array([[1.0, 2.0], [3.0, 4.0]])) == {
        "instances": [[1.0, 2.0], [3.0, 4.0]]
    }
    # Binary data goes as {"b64": ...} (the docs' example encodes b"hello").
    assert predict_request_body({"image_bytes": np.array([b"hello"])}) == {
        "instances": [{"image_bytes": {"b64": "aGVsbG8="}}]
    }


def test_bad_requests_are_refused_before_sending():
    with pytest.raises(ValueError, match="same first dimension.*request_format='inputs'"):
        predict_request_body({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="request_format must be one of"):
        predict_request_body(np.zeros(2), request_format="rows")
    with pytest.raises(TypeError, match="Cannot send an array of dtype complex128"):
        predict_request_body(np.zeros(2, dtype=complex))
    with pytest.raises(ValueError, match="No inputs given"):
        predict_request_body({})


def test_parse_documented_responses():
    single = parse_predict_response({"predictions": [[0.25, 0.75], [0.5, 0.5]]})
    np.testing.assert_array_equal(single, [[0.25, 0.75], [0.5, 0.5]])
    rows = parse_predict_response(
        {"predictions": [{"probabilities": [0.1, 0.9], "class_ids": 1},
                         {"probabilities": [0.8, 0.2], "class_ids": 0}]}
    )
    np.testing.assert_array_equal(rows["probabilities"], [[0.1, 0.9], [0.8, 0.2]])
    np.testing.assert_array_equal(rows["class_ids"], [1, 0])
    columns = parse_predict_response({"outputs": {"class_ids": [1, 0]}})
    np.testing.assert_array_equal(columns["class_ids"], [1, 0])
    binary = parse_predict_response({"predictions": [{"b64": "aGVsbG8="}]})
    assert binary.tolist() == [b"hello"]
    with pytest.raises(ServingError, match="Servable not found"):
        parse_predict_response({"error": "Servable not found for request: Latest(foo)"})
    with pytest.raises(ServingError, match="no 'predictions' or 'outputs'"):
        parse_predict_response({"result": 1})


def test_rest_urls():
    assert TFServingRestClient.model_path("image") == "/v1/models/image"
    assert TFServingRestClient.model_path("image", 3) == "/v1/models/image/versions/3"
    with pytest.raises(ValueError, match="Invalid model name"):
        TFServingRestClient.model_path("a/b")
    with pytest.raises(ValueError, match="Invalid version"):
        TFServingRestClient.model_path("image", "latest")


def test_grpc_request_and_response_protos():
    images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 1), dtype=np.uint8)
    request = grpc_predict_request("image", {"images": images}, version=4)
    assert request.model_spec.name == "image"
    assert request.model_spec.version.value == 4
    assert request.model_spec.signature_name == "serving_default"
    assert request.inputs["images"].dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["images"]), images)
    with pytest.raises(TypeError, match="named inputs"):
        grpc_predict_request("image", images)

    response = predict_pb2.PredictResponse()
    response.outputs["class_ids"].CopyFrom(tf.make_tensor_proto(np.array([3, 1], np.int64)))
    outputs = grpc_predict_outputs(response)
    assert outputs["class_ids"].dtype == np.int64
    np.testing.assert_array_equal(outputs["class_ids"], [3, 1])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_clients_say_when_nothing_is_listening():
    port = _free_port()
    with pytest.raises(ServerUnavailableError, match="cannot connect to"):
        TFServingRestClient(f"http://127.0.0.1:{port}", timeout=5).predict("m", np.zeros((1, 2)))
    client = TFServingGrpcClient(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(ServerUnavailableError, match="no gRPC server answering"):
        client.predict("m", {"x": np.zeros((1, 2))})
    client.close()


def test_grpc_client_names_a_port_that_is_not_tf_serving():
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()  # a real gRPC server with no services: every method is UNIMPLEMENTED
    try:
        client = TFServingGrpcClient(f"127.0.0.1:{port}", timeout=10)
        expected = "UNIMPLEMENTED.*not TF Serving's PredictionService"
        with pytest.raises(ServingError, match=expected) as info:
            client.predict("m", {"x": np.zeros((1, 2), np.float32)})
        assert not isinstance(info.value, (BadRequestError, ModelNotFoundError))
        client.close()
    finally:
        server.stop(None)
