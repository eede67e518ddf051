"""Image backbones: images -> pooled features, as Keras functional models.

- CIFAR-style ResNets (He et al., 2016): a 3x3 stem and stages of basic blocks, no
  max-pool, for small images. `resnet20` (and any `resnet<6n+2>`: 3 stages of n blocks,
  16/32/64 filters) and `resnet18` (4 stages of 2 blocks, 64..512 filters).
- `resnet50`: `keras.applications.ResNet50` with random weights (the ImageNet model;
  needs images of at least 32x32).

`width` scales the first stage's filter count (later stages double it), to make the
CIFAR models smaller or larger.
"""

import re

import keras
from keras import layers

CIFAR_DEPTH = re.compile(r"^resnet(\d+)$")
BACKBONES = ("resnet18", "resnet20", "resnet<6n+2> (e.g. resnet8, resnet32)", "resnet50")


def _conv_bn(x, filters, kernel_size, strides, name):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    # synchronized: under a distribution strategy, batch statistics over the global batch,
    # so N replicas train the model one device would (it costs an all-reduce per layer).
    return layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, synchronized=True, name=f"{name}_bn"
    )(x)


def basic_block(x, filters, strides, name):
    """Two 3x3 convolutions with a residual; a 1x1 projection when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, name=f"{name}_proj")
    x = _conv_bn(x, filters, 3, strides, name=f"{name}_1")
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv_bn(x, filters, 3, 1, name=f"{name}_2")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(x)


def cifar_resnet(input_shape, blocks_per_stage, width, name):
    inputs = keras.Input(input_shape, name="images")
    x = _conv_bn(inputs, width, 3, 1, name="stem")
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, num_blocks in enumerate(blocks_per_stage):
        for block in range(num_blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = basic_block(x, width * 2**stage, strides, name=f"stage{stage + 1}_block{block + 1}")
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, features, name=name)


def backbone_problems(name, input_shape=None, width=None):
    """What is wrong with backbone `name` for images of `input_shape` (a list of messages)."""
    if name == "resnet50":
        problems = []
        if width is not None:
            problems.append(
                "width applies to the CIFAR-style ResNets, not resnet50 (use --width none)"
            )
        if input_shape is not None and min(input_shape[:2]) < 32:
            problems.append(
                f"resnet50 needs images of at least 32x32 (got {tuple(input_shape[:2])}); set "
                "image_size, or use a CIFAR-style ResNet (resnet20, resnet18) for small images"
            )
        return problems
    match = CIFAR_DEPTH.match(name)
    depth_ok = match and (int(match.group(1)) - 2) % 6 == 0 and int(match.group(1)) >= 8
    if name != "resnet18" and not depth_ok:
        return [f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"]
    if width is not None and width < 1:
        return [f"width must be >= 1 (got {width})"]
    return []


def build_backbone(name, input_shape, width=None):
    """The backbone called `name` for images of `input_shape` (height, width, channels)."""
    problems = backbone_problems(name, input_shape, width)
    if problems:
        raise ValueError("; ".join(problems) + ".")
    if name == "resnet50":
        return keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=input_shape, pooling="avg"
        )
    if name == "resnet18":
        return cifar_resnet(input_shape, (2, 2, 2, 2), width or 64, name="resnet18")
    blocks = (int(CIFAR_DEPTH.match(name).group(1)) - 2) // 6
    return cifar_resnet(input_shape, (blocks,) * 3, width or 16, name=name)
