"""The training pipelines (`image`, `sac`, `grpo`) and the export CLI (`export`).

Every pipeline runs on TensorFlow (keras-hub's preprocessing included, on any Keras
backend), so TensorFlow is imported here, first, without the INFO lines its native
libraries print while they load (see `common.native_logs`).
"""

from pipelines.common.native_logs import import_tensorflow

import_tensorflow()
