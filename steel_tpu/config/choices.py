"""The names a config may choose (encoders, architectures, heads, loss terms), importable without TensorFlow."""

# keras.applications' EfficientNetB0..B7 and a small residual CNN (models/encoders.py builds exactly these).
ENCODERS = (*(f"efficientnetb{i}" for i in range(8)), "plaincnn")
# Encoders without ImageNet weights: random init only (weights=None).
RANDOM_INIT_ENCODERS = ("plaincnn",)
SEGMENTER_ARCHS = ("unetpp", "unet", "sm-unet", "sm-fpn", "sm-linknet")
# sigmoid: a probability per class; softmax: one distribution per pixel over background + the classes (models/heads.py).
SEGMENTER_HEADS = ("sigmoid", "softmax")
CLASSIFIER_HEADS = ("binary", "multilabel", "both")
LOSS_TERMS = ("bce", "cce", "dice", "batch_dice", "focal", "lovasz")
# The terms each segmenter head can train with: cce needs one distribution per pixel, the others score each class
# as an independent sigmoid probability (the Dice terms work on either).
HEAD_LOSS_TERMS = {"sigmoid": ("bce", "dice", "batch_dice", "focal", "lovasz"),
                   "softmax": ("cce", "dice", "batch_dice")}
WEIGHTS = (None, "imagenet")
# Where a run goes (config `device`): auto detects; the others are explicit choices (distribute.prefer_for).
DEVICES = ("auto", "tpu", "gpu", "cpu")
# Which Keras backend runs the device side (config `backend`): auto chooses from the host (steel_tpu/backend.py).
BACKENDS = ("auto", "tf", "jax")

# What sm.get_preprocessing(backbone) does to an image, per segmentation-models backbone (checked against it in
# the tests); its names are the encoders an sm-* arch accepts.
SM_PREPROCESSING = {
    # These normalise with an input BatchNormalization of their own.
    "none": (
        *("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
        *("seresnet18", "seresnet34", "resnext50", "resnext101"),
    ),
    "torch": (
        *("seresnet50", "seresnet101", "seresnet152", "seresnext50", "seresnext101", "senet154"),
        *("densenet121", "densenet169", "densenet201", *(f"efficientnetb{i}" for i in range(8))),
    ),
    "tf": ("inceptionresnetv2", "inceptionv3", "mobilenet", "mobilenetv2"),
    "caffe": ("vgg16", "vgg19"),
}
SM_BACKBONES = tuple(name for names in SM_PREPROCESSING.values() for name in names)


def encoders_for(arch):
    """The encoder names a segmenter `arch` accepts (segmentation-models backbones for sm-* archs)."""
    return SM_BACKBONES if arch.startswith("sm-") else ENCODERS
