"""Serving benchmark: what ERA costs per request once it is baked into a SavedModel.

Builds one small image classifier per (head, classes) setting, the same CNN body with a
plain softmax head or a softmax-ERA head (H0 = 0.6, tight floor, exact W_-1), exports each
the way the image pipeline does (uint8 images -> probabilities, class_ids), and times
predictions on two serving paths:

- `session`: `serving.signature_runner.SignatureRunner`, TF Serving's own way of running
  a SavedModel (MetaGraphDef + session, signature tensors by name), in this process;
- `mlflow-rest`: `mlflow models serve` of the logged servable on loopback, through
  `serving.client.MlflowServingClient` (JSON encode, HTTP, JSON decode included).

Settings are interleaved within every round (order shuffled per round); a round times
`--calls` predictions per setting and keeps the median. Reported: mean and standard
deviation over rounds of those medians, and the ERA/plain ratio per round. Random-init
weights: latency does not depend on training. No TF Serving binary exists here, so TF
Serving's own HTTP/gRPC overhead is not measured. Pinned to one core (--cpu 1), the
MLflow servers included.

    nice .venv/bin/python benchmarks/serving_latency.py --rounds 5 --calls 30
"""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import common
import numpy as np

common.setup()

HEADS = ("plain", "era")


def build_classifier(head, num_classes, seed=0):
    import keras

    import era_keras

    keras.utils.set_random_seed(seed)
    images = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(images)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(num_classes)(x)
    if head == "era":
        logits = era_keras.SoftmaxERA(target_entropy=0.6)(logits)
    return keras.Model(images, logits)


def export_classifier(model, path):
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        probabilities = tf.nn.softmax(model(tf.cast(images, tf.float32) / 255.0), axis=-1)
        return {"probabilities": probabilities,
                "class_ids": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.uint8, name="images")],
    )
    archive.write_out(str(path), verbose=False)
    return path


def median_ms(predict, inputs, calls):
    predict(inputs)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(saved_model_dir, workdir):
    import mlflow

    from serving.client import MlflowServingClient
    from serving.mlflow_model import log_saved_model

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    name = pathlib.Path(saved_model_dir).name
    experiment = mlflow.create_experiment(name, artifact_location=str(workdir / name))
    with mlflow.start_run(experiment_id=experiment):
        model_uri = log_saved_model(saved_model_dir).model_uri
    port = _free_port()
    bin_dir = pathlib.Path(sys.executable).parent
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri,
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "-h", "127.0.0.1",
         "-p", str(port), "--env-manager", "local"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = MlflowServingClient(f"http://127.0.0.1:{port}", timeout=120)
    client.wait_until_ready(timeout=300, process=server)
    return server, client


def main():
    parser = common.parser(__doc__, cpu=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per setting per round")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rest-classes", type=int, default=10,
                        help="class count of the models also served over MLflow REST")
    args = parser.parse_args()
    common.pin(args.cpu)  # before the MLflow servers start: they inherit it

    from serving.signature_runner import SignatureRunner

    rng = np.random.default_rng(0)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="serving-bench-"))
    runners, exports = {}, {}
    for classes in args.classes:
        for head in HEADS:
            path = export_classifier(build_classifier(head, classes),
                                     workdir / f"{head}-{classes}")
            exports[(head, classes)] = path
            runners[(head, classes)] = SignatureRunner(path)
    servers, clients = [], {}
    for head in HEADS:
        server, client = start_mlflow_server(exports[(head, args.rest_classes)], workdir)
        servers.append(server)
        clients[head] = client

    settings = [("session", head, classes, batch) for classes in args.classes
                for batch in args.batches for head in HEADS]
    settings += [("mlflow-rest", head, args.rest_classes, batch)
                 for batch in args.batches for head in HEADS]
    inputs = {batch: {"images": rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)}
              for batch in args.batches}

    def measure(setting):
        path, head, classes, batch = setting
        predict = runners[(head, classes)] if path == "session" else clients[head].predict
        return median_ms(predict, inputs[batch], args.calls)

    try:
        results = common.interleave(
            {setting: lambda s=setting: measure(s) for setting in settings},
            args.rounds, order="shuffle")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)

    rows = []
    for path, head, classes, batch in settings:
        if head != "era":
            continue
        plain = np.asarray(results[(path, "plain", classes, batch)])
        era = np.asarray(results[(path, "era", classes, batch)])
        rows.append([path, classes, batch, common.format_mean_sd(plain),
                     common.format_mean_sd(era), common.format_mean_sd(era / plain)])
    common.write_results(
        args.name,
        "Serving latency: plain softmax vs softmax-ERA head, same SavedModel path",
        [
            f"No GPU. {args.rounds} rounds x {args.calls} timed calls per setting, settings "
            "interleaved in a shuffled order each round; mean ± sd over rounds of the "
            "per-round median; the ratio is taken per round.\n"
            "Model: 2 strided 3x3 convs (16, 32 filters) + global average pool + dense head, "
            "28x28x1 uint8 input, random init; ERA: SoftmaxERA(H0=0.6, tight, exact W_-1).",
            common.table(["path", "classes", "batch", "plain ms/request", "ERA ms/request",
                          "ERA / plain"], rows),
        ],
    )


if __name__ == "__main__":
    main()
