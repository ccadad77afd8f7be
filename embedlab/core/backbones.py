"""What each backbone is and can do: the one registry that params validation, model building and the docs read.

Adding a backbone is one entry here (and, for a Keras application, nothing else). Facts only, no Keras import, so
validating ``params.yaml`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Backbone:
    """A Keras application (or embedlab's small-image network) and what it accepts."""

    build: str  # attribute of keras.applications, or "SmallNet" (embedlab.models.smallnet)
    preprocess: Literal["caffe", "tf", "torch"]  # caffe: BGR minus ImageNet mean; tf: [-1, 1]; torch: ImageNet std
    min_size: int  # smallest input side the architecture accepts
    weights_file: (
        str | None
    )  # the no-top ImageNet file Keras downloads into ~/.keras/models/; None: no ImageNet weights
    smallnet_options: bool = False  # model.widths, whiten_stem, identity_init, freeze_stem and bn_scale apply to it

    @property
    def imagenet_weights(self) -> bool:
        """Whether ``model.weights: imagenet`` exists for it."""
        return self.weights_file is not None


BACKBONES: dict[str, Backbone] = {
    "densenet121": Backbone("DenseNet121", "torch", 32, "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50": Backbone("ResNet50", "caffe", 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16": Backbone("VGG16", "caffe", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": Backbone("Xception", "tf", 71, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenetv2": Backbone(
        "MobileNetV2", "tf", 32, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"
    ),
    # built for training from scratch on small images
    "smallnet": Backbone("SmallNet", "tf", 16, None, smallnet_options=True),
}

# smallnet's three block widths by default (airbench94's): each block halves the side, so three suit 32-64 px inputs
SMALLNET_WIDTHS = (64, 256, 256)

BackboneName = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]  # the names params.yaml accepts
