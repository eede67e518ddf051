"""The clients against servers that speak TF Serving's protocols (`stand_ins`): the gRPC
PredictionService of tensorflow-serving-api and the REST predict API, serving the ERA
classifier's SavedModel. Success, a request that does not fit, and an unknown model."""

import numpy as np
import pytest

from serving.client import (
    BadRequestError,
    ModelNotFoundError,
    TFServingGrpcClient,
    TFServingRestClient,
)
from tests.serving.stand_ins import grpc_prediction_service, rest_prediction_service


@pytest.fixture(scope="module")
def grpc_client(era_classifier):
    with grpc_prediction_service(era_classifier.path, "digits") as target:
        client = TFServingGrpcClient(target, timeout=60)
        yield client
        client.close()


def test_grpc_predict_returns_what_keras_computes(grpc_client, era_classifier):
    outputs = grpc_client.predict("digits", {"images": era_classifier.images})
    assert outputs["probabilities"].dtype == np.float32  # gRPC keeps dtypes
    np.testing.assert_allclose(outputs["probabilities"], era_classifier.probabilities, atol=1e-6)
    np.testing.assert_array_equal(outputs["class_ids"], era_classifier.probabilities.argmax(-1))


def test_grpc_wrong_shape_is_invalid_argument_naming_the_spec(grpc_client):
    expected = r"INVALID_ARGUMENT.*must be float32 \[-1, 8, 8, 1\]"
    with pytest.raises(BadRequestError, match=expected) as info:
        grpc_client.predict("digits", {"images": np.zeros((3, 8, 8), np.float32)})
    assert info.value.status == "INVALID_ARGUMENT"


def test_grpc_unknown_model_is_not_found(grpc_client):
    expected = r"Servable not found for request: Latest\(nope\)"
    with pytest.raises(ModelNotFoundError, match=expected) as info:
        grpc_client.predict("nope", {"images": np.zeros((1, 8, 8, 1), np.float32)})
    assert info.value.status == "NOT_FOUND"


def test_grpc_metadata_lists_the_signatures(grpc_client):
    signatures = grpc_client.metadata("digits").signature_def
    assert "serving_default" in signatures
    assert list(signatures["serving_default"].inputs) == ["images"]


@pytest.fixture(scope="module")
def rest_client(era_classifier):
    with rest_prediction_service(era_classifier.path, "digits") as url:
        yield TFServingRestClient(url, timeout=60)


@pytest.mark.parametrize("request_format", ["instances", "inputs"])
def test_rest_predict_returns_what_keras_computes(rest_client, era_classifier, request_format):
    outputs = rest_client.predict("digits", {"images": era_classifier.images},
                                  request_format=request_format)
    np.testing.assert_allclose(outputs["probabilities"], era_classifier.probabilities, atol=1e-6)


def test_rest_400_is_a_bad_request_error_with_the_servers_reason(rest_client):
    expected = r"HTTP 400.*must be float32 \[-1, 8, 8, 1\], got"
    with pytest.raises(BadRequestError, match=expected) as info:
        rest_client.predict("digits", {"images": np.zeros((2, 3), np.float32)})
    assert info.value.status == 400


def test_rest_404_is_a_model_not_found_error(rest_client):
    with pytest.raises(ModelNotFoundError, match="serves no model 'nope'"):
        rest_client.predict("nope", np.zeros((1, 8, 8, 1), np.float32))
