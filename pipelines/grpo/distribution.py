"""GRPO on several devices: Keras' distribution API over JAX (`--distribution`).

Three forms:

- `none`: one device, as Keras places things by default.
- `data`: `keras.distribution.DataParallel` over every device; weights are replicated,
  each batch (prompts, rollouts, evaluation samples) is split along its first axis.
- `model:BxM`: `keras.distribution.ModelParallel` on a `DeviceMesh((B, M), ("batch",
  "model"))`. The backbone's weights are sharded by a layout map (keras-hub's
  `get_layout_map` where the backbone has one; Qwen3 and Gemma 3 get theirs here) and
  batches are split on "batch". B x M must equal the number of devices.

`distribution_scope(distribution)` is entered by the loop around everything it does:
the model is built (or loaded) under it, so its variables are created sharded; rollout
generation, the update and evaluation run under it; `shard_batch` lays each batch out on
the "batch" axis. A checkpoint holds plain (gathered) arrays, so a run restores into any
mesh, or none.

On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before JAX is
imported) gives 4 simulated devices to try this on. Across processes (`--processes`,
`processes.py`) the devices are every process's, and the mesh spans them all.
"""

import contextlib
import dataclasses
import re

import keras
import numpy as np

from pipelines.common.errors import UserError

BATCH_AXIS, MODEL_AXIS = "batch", "model"
FORMS = "none, data, or model:BxM (e.g. model:2x2)"
_MODEL_FORM = re.compile(r"^model:(\d+)x(\d+)$")


@dataclasses.dataclass(frozen=True)
class DistributionSpec:
    """What `--distribution` asked for: kind "none", "data" or "model", and the mesh."""

    kind: str
    batch: int = 1
    model: int = 1

    def __str__(self):
        return f"model:{self.batch}x{self.model}" if self.kind == "model" else self.kind


def parse_distribution(text):
    """`--distribution` text -> DistributionSpec; a UserError names the allowed forms."""
    text = str(text).strip().lower()
    if text in ("none", "data"):
        return DistributionSpec(text)
    match = _MODEL_FORM.match(text)
    if not match:
        raise UserError(f"--distribution {text!r} is not a known form; use {FORMS}.")
    batch, model = int(match.group(1)), int(match.group(2))
    if batch < 1 or model < 1:
        raise UserError(f"--distribution {text!r}: both mesh sizes must be >= 1; use {FORMS}.")
    return DistributionSpec("model", batch, model)


def check_distribution(spec, backend, device_count):
    """Raise a UserError when `spec` cannot run on this backend and these devices."""
    if spec.kind == "none":
        return
    if backend != "jax":
        raise UserError(
            f"--distribution {spec} needs the JAX backend (Keras' distribution API shards "
            f"over JAX); this process runs Keras on {backend!r}. Set KERAS_BACKEND=jax, "
            "or use --distribution none."
        )
    if spec.kind == "model" and spec.batch * spec.model != device_count:
        raise UserError(
            f"--distribution {spec}: a {spec.batch}x{spec.model} mesh needs "
            f"{spec.batch * spec.model} devices, and this process sees {device_count}. "
            f"Choose B x M = {device_count} (e.g. model:1x{device_count})."
        )


def mesh_shape(spec, device_count):
    """(batch, model) sizes of the mesh `spec` runs on."""
    if spec.kind == "data":
        return device_count, 1
    if spec.kind == "model":
        return spec.batch, spec.model
    return 1, 1


# --- layout maps ----------------------------------------------------------------------
# The sharding of keras-hub's Qwen and Gemma maps (after the Gemma team's training
# config, arXiv 2403.08295): embeddings and attention projections split their widest
# dimensions on "model" and the hidden dimension on "batch" (ZeRO-3 style), feed-forward
# kernels are split Megatron-style. Norm scales and biases are replicated.


def qwen3_layout_map(device_mesh):
    """Layout map of a keras-hub Qwen3Backbone (keras-hub 0.32 ships none).

    Qwen3's weights carry the same paths as Qwen 2.5's, plus per-head query/key norms
    (`query_dense_layernorm`, `key_dense_layernorm`), which stay replicated.
    """
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map["token_embedding/embeddings"] = (MODEL_AXIS, BATCH_AXIS)
    layout_map["transformer_layer.*self_attention.*(query|key|value).kernel"] = (
        MODEL_AXIS, BATCH_AXIS, None)
    layout_map["transformer_layer.*attention_output.kernel"] = (MODEL_AXIS, None, BATCH_AXIS)
    layout_map["transformer_layer.*feedforward_(intermediate|gate)_dense.kernel"] = (
        BATCH_AXIS, MODEL_AXIS)
    layout_map["transformer_layer.*feedforward_output_dense.kernel"] = (MODEL_AXIS, BATCH_AXIS)
    return layout_map


def gemma3_layout_map(device_mesh):
    """Layout map of a keras-hub Gemma3Backbone (keras-hub 0.32 ships none).

    Gemma 3's decoder blocks carry Gemma's paths (attention kernels are
    (heads, hidden, head_dim)), plus query/key norms, which stay replicated.
    """
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map["token_embedding/embeddings"] = (MODEL_AXIS, BATCH_AXIS)
    layout_map["decoder_block.*attention.*(query|key|value).kernel"] = (
        MODEL_AXIS, BATCH_AXIS, None)
    layout_map["decoder_block.*attention_output.kernel"] = (MODEL_AXIS, None, BATCH_AXIS)
    layout_map["decoder_block.*ffw_gating.*kernel"] = (BATCH_AXIS, MODEL_AXIS)
    layout_map["decoder_block.*ffw_linear.kernel"] = (MODEL_AXIS, BATCH_AXIS)
    return layout_map


def layout_map_for(backbone_class, device_mesh):
    """The layout map of `backbone_class` on `device_mesh`."""
    import keras_hub

    ours = {keras_hub.models.Qwen3Backbone: qwen3_layout_map,
            keras_hub.models.Gemma3Backbone: gemma3_layout_map}
    for cls, build in ours.items():
        if issubclass(backbone_class, cls):
            return build(device_mesh)
    if hasattr(backbone_class, "get_layout_map"):
        return backbone_class.get_layout_map(
            device_mesh, model_parallel_dim_name=MODEL_AXIS, data_parallel_dim_name=BATCH_AXIS)
    raise UserError(
        f"{backbone_class.__name__} has no layout map for --distribution model:BxM "
        "(Qwen, Qwen3, Gemma, Gemma 3 and Llama have one); use --distribution data."
    )


class ShardedModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that replicates a dimension its mesh axis does not divide.

    XLA shards a dimension only evenly; a map written for real checkpoints (vocabularies
    like 151936) meets odd sizes in small models (a 258-token vocabulary on 4 devices).
    Such a dimension is kept whole rather than refused; every other one is split as the
    map says.
    """

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        axes = list(layout.axes)
        sizes = dict(zip(self.device_mesh.axis_names, self.device_mesh.shape))
        changed = False
        for i, axis in enumerate(axes):
            if axis is not None and variable.shape[i] % sizes[axis]:
                axes[i], changed = None, True
        if not changed:
            return layout
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def build_distribution(spec, backbone_class):
    """The keras.distribution.Distribution for `spec` (None for "none")."""
    if spec.kind == "none":
        return None
    devices = keras.distribution.list_devices()
    check_distribution(spec, keras.backend.backend(), len(devices))
    batch, model = mesh_shape(spec, len(devices))
    if spec.kind == "data":
        # DataParallel takes a one-axis mesh: its first axis is the batch axis.
        mesh = keras.distribution.DeviceMesh((batch,), (BATCH_AXIS,), devices)
        return keras.distribution.DataParallel(device_mesh=mesh)
    mesh = keras.distribution.DeviceMesh((batch, model), (BATCH_AXIS, MODEL_AXIS), devices)
    return ShardedModelParallel(layout_map=layout_map_for(backbone_class, mesh),
                                batch_dim_name=BATCH_AXIS)


@contextlib.contextmanager
def distribution_scope(distribution):
    """Everything inside runs under `distribution` (nothing changes for None)."""
    if distribution is None:
        yield
        return
    with distribution.scope():
        yield


def batch_shards(distribution):
    """How many pieces a batch is split into (1 without a distribution)."""
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[mesh.axis_names.index(BATCH_AXIS)])


def shard_batch(distribution, arrays):
    """Lay out each array of `arrays` (a dict) along the "batch" mesh axis.

    An array whose first dimension the batch axis does not divide is replicated: the
    result is the same, only the work is not split.
    """
    if distribution is None:
        return arrays
    shards = batch_shards(distribution)
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.ndim and value.shape[0] % shards == 0:
            layout = distribution.get_data_layout(value.shape)
        else:
            layout = keras.distribution.TensorLayout([None] * value.ndim,
                                                     distribution.device_mesh)
        out[name] = keras.distribution.distribute_tensor(value, layout)
    return out


def count_parameters(model):
    """(all, trainable) parameter counts of `model`."""
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return total, trainable


def describe(spec, distribution, model):
    """What to log to MLflow about the layout: mesh, devices, parameter counts."""
    devices = keras.distribution.list_devices()
    if distribution is None:
        mesh, used = "1x1", devices[:1]
    else:
        shape = tuple(distribution.device_mesh.shape)
        mesh = "x".join(str(s) for s in (shape + (1,))[:2])
        used = list(np.asarray(distribution.device_mesh.devices).reshape(-1))
    total, trainable = count_parameters(model)
    return {
        "distribution": str(spec),
        "mesh_batch_x_model": mesh,
        "devices": len(used),
        "device_kind": str(used[0]).split(":")[0] if used else "none",
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_share": trainable / max(total, 1),
    }


def variable_sharding(variable):
    """The mesh axes a variable's value is split on, per dimension (None: whole)."""
    value = variable.value
    spec = getattr(getattr(value, "sharding", None), "spec", None)
    if spec is None:
        return tuple(None for _ in variable.shape)
    return tuple(spec) + (None,) * (len(variable.shape) - len(spec))
