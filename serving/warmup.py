"""A servable's own example requests: TF Serving's SavedModel warm-up file.

TF Serving replays the PredictionLog records in `assets.extra/tf_serving_warmup_requests`
(a TFRecord file) when it loads a version, before serving it, and does not serve a version
whose warm-up fails (https://www.tensorflow.org/tfx/serving/saved_model_warmup). A
servable for which zeros are not a valid request writes one here (the generate servable:
a prompt needs at least one token), and the standalone load check
(`serving.export.check_loads_standalone`) replays these instead of zeros.
"""

import pathlib

WARMUP_FILE = pathlib.Path("assets.extra") / "tf_serving_warmup_requests"


def write_warmup_requests(saved_model_dir, requests):
    """Write [(signature name, {input name: array}), ...] as the SavedModel's warm-up
    requests; returns the file's path."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = pathlib.Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir):
    """The SavedModel's warm-up predict requests as [(signature name, {input name: array})];
    [] when it has none."""
    path = pathlib.Path(saved_model_dir) / WARMUP_FILE
    if not path.is_file():
        return []
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            continue  # classify / regress / multi-inference logs: no servable here has them
        request = log.predict_log.request
        requests.append((request.model_spec.signature_name or "serving_default",
                         {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}))
    return requests
