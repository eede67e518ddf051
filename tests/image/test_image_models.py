"""Backbones, heads and the classifier."""

import keras
import numpy as np
import pytest

import era_keras
from pipelines.image.backbones import build_backbone
from pipelines.image.classifier import build_classifier
from pipelines.image.heads import HeadConfig, classification_head, head_loss, served_probabilities


def test_resnet20_has_the_published_size():
    # He et al. (2016), Table 6: ResNet-20 on CIFAR-10 has 0.27M parameters.
    backbone = build_backbone("resnet20", (32, 32, 3))
    params = backbone.count_params() + (64 * 10 + 10)  # plus the 10-way classifier
    assert 0.26e6 < params < 0.28e6
    assert backbone.output.shape == (None, 64)


def test_resnet18_and_depth_family_shapes():
    assert build_backbone("resnet18", (32, 32, 3), width=8).output.shape == (None, 64)
    assert build_backbone("resnet8", (28, 28, 1), width=4).output.shape == (None, 16)
    resnet32 = build_backbone("resnet32", (32, 32, 3), width=4)
    blocks = [layer for layer in resnet32.layers if layer.name.endswith("_add")]
    assert len(blocks) == 15  # 3 stages x 5 blocks


def test_resnet50_comes_from_keras_applications_and_checks_size():
    backbone = build_backbone("resnet50", (32, 32, 3))
    assert backbone.output.shape == (None, 2048)
    assert 23.0e6 < backbone.count_params() < 24.0e6
    with pytest.raises(ValueError, match="at least 32x32"):
        build_backbone("resnet50", (28, 28, 1))


@pytest.mark.parametrize("name", ["resnet21", "resnet2", "vgg16"])
def test_unknown_backbone_names_the_choices(name):
    with pytest.raises(ValueError, match=r"unknown backbone.*resnet20"):
        build_backbone(name, (32, 32, 3))


def _head_model(head, num_classes=10):
    features = keras.Input((6,))
    return keras.Model(features, classification_head(features, num_classes, head))


def test_era_head_keeps_the_floor_and_the_argmax():
    head = HeadConfig(kind="era", target_entropy=0.6)
    model = _head_model(head)
    features = np.random.default_rng(0).normal(scale=30.0, size=(256, 6)).astype("float32")
    logits = model.predict(features, verbose=0)
    p = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    entropy = -(p * np.log(p)).sum(-1)
    assert entropy.min() >= 0.6 - 1e-4
    raw = keras.Model(model.inputs, model.get_layer("logits").output).predict(features, verbose=0)
    assert np.array_equal(raw.argmax(-1), logits.argmax(-1))


def test_era_off_at_inference_serves_plain_logits_but_trains_with_the_floor():
    head = HeadConfig(kind="era", target_entropy=0.6, era_at_inference=False)
    model = _head_model(head)
    features = np.random.default_rng(1).normal(scale=30.0, size=(64, 6)).astype("float32")
    raw = model.get_layer("logits")(features)
    served = model(features, training=False)
    trained = model(features, training=True)
    assert np.allclose(served, raw)
    assert not np.allclose(trained, raw)
    assert served_probabilities(head) == "softmax"
    assert "era_floor" in served_probabilities(HeadConfig(kind="era"))


def test_heads_set_loss_and_dropout():
    era_ls = HeadConfig(kind="era_label_smoothing", label_smoothing=0.2)
    assert head_loss(era_ls).label_smoothing == 0.2
    assert head_loss(HeadConfig(kind="era")).label_smoothing == 0.0
    assert head_loss(HeadConfig(kind="label_smoothing", label_smoothing=0.1)).label_smoothing == 0.1
    dropout = _head_model(HeadConfig(kind="dropout", dropout=0.3)).get_layer("dropout")
    assert dropout.rate == 0.3
    with pytest.raises(ValueError):
        _head_model(HeadConfig(kind="softmax")).get_layer("dropout")


@pytest.mark.parametrize(
    "target, floor, limit",
    [(2.5, "tight", "2.3026"), (2.3, "paper", "2.2429"), (0.0, "tight", "0.0000")],
)
def test_bad_era_target_gives_the_admissible_range(target, floor, limit):
    head = HeadConfig(kind="era", target_entropy=target, era_floor=floor)
    with pytest.raises(ValueError, match=rf"target_entropy={target}.*admissible range.*{limit}"):
        head.validate(10)


def test_head_validate_reports_the_real_floor():
    report = HeadConfig(kind="era", target_entropy=0.6, era_floor="paper").validate(10)
    assert report == era_keras.entropy_floor(10, 0.6, floor="paper")
    assert report.min_entropy > 0.9  # the paper floor is loose (docs/layers.md)
    assert HeadConfig(kind="softmax").validate(10) is None


def test_classifier_normalises_its_inputs():
    head = HeadConfig(kind="softmax")
    model = build_classifier((8, 8, 1), 10, "resnet8", head, mean=[0.3], variance=[0.04], width=4)
    normalize = model.get_layer("normalize")
    out = normalize(np.full((1, 8, 8, 1), 0.5, "float32"))
    assert np.allclose(out, (0.5 - 0.3) / 0.2, atol=1e-5)
    assert model.output.shape == (None, 10)
