"""Model builders: shapes, float32 outputs under mixed precision, XLA compilation, skip tables, weights."""

import importlib.util
import socket
import sys
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf

from steel_tpu.models import (build_classifier, build_segmenter, build_sm, build_unet, build_unetpp,
                              set_batchnorm_momentum)
from steel_tpu.models.encoders import FAMILIES, STRIDES, build_encoder, encoder_names, resolve_weights
from steel_tpu.models.sm import PREPROCESSING, SmPreprocess, import_sm, preprocessing_mode
from steel_tpu.models.unetpp import Upsample2x

SHAPE = (64, 128, 3)
TINY = (32, 16, 8, 8, 4)
BATCH = 2
HAVE_SM = importlib.util.find_spec("segmentation_models") is not None
needs_sm = pytest.mark.skipif(not HAVE_SM, reason="segmentation-models not installed (pip install steel_tpu[sm])")


def _images(seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (BATCH, *SHAPE)).astype("float32"))


@pytest.fixture(scope="module")
def segmenters():
    return {
        "unetpp": build_segmenter(arch="unetpp", encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=TINY),
        "unetpp_ds": build_unetpp(
            encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=TINY, deep_supervision=True
        ),
        "unet": build_segmenter(arch="unet", encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=TINY),
    }


@pytest.fixture(scope="module")
def classifiers():
    return {
        heads: build_classifier(encoder="efficientnetb0", input_shape=SHAPE, heads=heads)
        for heads in ("binary", "both")
    }


@pytest.fixture(scope="module")
def bf16_models():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return {
            "unetpp_ds": build_unetpp(
                encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=TINY, deep_supervision=True
            ),
            "unet": build_unet(encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=TINY),
            "classifier": build_classifier(input_shape=SHAPE, heads="both"),
        }
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _flat(outputs):
    return list(outputs.values()) if isinstance(outputs, dict) else [outputs]


@pytest.mark.parametrize("name", ["unetpp", "unetpp_ds", "unet"])
def test_segmenter_outputs_full_resolution_float32_probabilities(segmenters, name):
    masks = segmenters[name](_images(), training=False)
    assert masks.shape == (BATCH, *SHAPE[:2], 4)
    assert masks.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(masks)) and float(tf.reduce_max(masks)) <= 1.0


def test_builders_dispatch_by_arch(segmenters, classifiers):
    assert segmenters["unetpp"].name == "unetpp_efficientnetb0"
    assert segmenters["unet"].name == "unet_efficientnetb0"
    assert classifiers["both"].name == "classifier_efficientnetb0_both"
    with pytest.raises(ValueError, match="segmenter arch must be one of"):
        build_segmenter(arch="deeplab", encoder="efficientnetb0", input_shape=SHAPE)
    with pytest.raises(ValueError, match="segmenter arch"):
        build_segmenter(arch="classifier", encoder="efficientnetb0", input_shape=SHAPE)


def test_classifier_heads(classifiers):
    images = _images()
    assert classifiers["binary"](images).shape == (BATCH, 1)
    both = classifiers["both"](images)
    assert {k: tuple(v.shape) for k, v in both.items()} == {"binary": (BATCH, 1), "multilabel": (BATCH, 4)}
    for out in _flat(both) + [classifiers["binary"](images)]:
        assert out.dtype == tf.float32
    with pytest.raises(ValueError, match="heads must be one of"):
        build_classifier(input_shape=SHAPE, heads="softmax")


@pytest.mark.parametrize("name", ["unetpp_ds", "unet", "classifier"])
def test_outputs_float32_under_mixed_bfloat16(bf16_models, name):
    model = bf16_models[name]
    # The policy really reached the network: the bulk computes in bfloat16, only the outputs are float32.
    computes = {layer.compute_dtype for layer in model.get_layer("efficientnetb0_encoder").layers}
    assert "bfloat16" in computes
    for out in _flat(model(_images(), training=False)):
        assert out.dtype == tf.float32
        assert bool(tf.reduce_all(tf.math.is_finite(out)))
    assert keras.mixed_precision.global_policy().name == "float32"


def test_softmax_head_outputs_float32_distributions_under_mixed_bfloat16_and_compiles_with_xla():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        # Deep supervision: the mean of four softmax heads must still be one distribution per pixel.
        model = build_segmenter(arch="unetpp", encoder="efficientnetb0", input_shape=(None, None, 3),
                                decoder_filters=TINY, deep_supervision=True, head="softmax")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    computes = {layer.compute_dtype for layer in model.get_layer("efficientnetb0_encoder").layers}
    assert "bfloat16" in computes
    images = tf.constant(np.random.default_rng(5).uniform(0, 255, (BATCH, 32, 160, 3)).astype("float32"))
    out = model(images, training=False)
    assert out.shape == (BATCH, 32, 160, 5) and out.dtype == tf.float32  # background + 4 classes
    assert all(model.get_layer(f"masks_x0{j}").compute_dtype == "float32" for j in range(1, 5))
    np.testing.assert_allclose(tf.reduce_sum(out, axis=-1).numpy(), 1.0, atol=1e-5)
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)(images)
    assert compiled.dtype == tf.float32
    # bfloat16 inside: XLA and the eager kernels may round the bulk differently, not the float32 softmax.
    np.testing.assert_allclose(compiled.numpy(), out.numpy(), atol=2e-2)
    with pytest.raises(ValueError, match="segmenter head must be one of"):
        build_unet(encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=TINY, head="argmax")


@needs_sm
def test_sm_softmax_head_outputs_background_and_classes():
    model = build_sm(arch="linknet", backbone="resnet18", input_shape=SHAPE, head="softmax")
    out = model(_images(), training=False)
    assert out.shape == (BATCH, *SHAPE[:2], 5) and out.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(out, axis=-1).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("builder", [build_unetpp, build_unet])
def test_input_size_must_be_multiple_of_32(builder):
    with pytest.raises(ValueError, match=r"multiples of 32.*60x128"):
        builder(encoder="efficientnetb0", input_shape=(60, 128, 3))
    with pytest.raises(ValueError, match=r"multiples of 32.*256x400; e.g. 256x384"):
        builder(encoder="efficientnetb0", input_shape=(256, 400, 3))
    with pytest.raises(ValueError, match="5 widths"):
        builder(encoder="efficientnetb0", input_shape=SHAPE, decoder_filters=(8, 8))


def test_sm_arguments_checked_before_import():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_sm(arch="unet", backbone="resnet18", input_shape=(64, 100, 3))
    with pytest.raises(ValueError, match="unknown segmentation-models backbone 'resnet19'"):
        build_sm(arch="unet", backbone="resnet19", input_shape=SHAPE)
    with pytest.raises(ValueError, match="arch must be one of"):
        build_sm(arch="pspnet", backbone="resnet18", input_shape=SHAPE)


_FAST_ENCODERS = ("efficientnetb0", "efficientnetb3", "plaincnn")


@pytest.mark.parametrize("name", _FAST_ENCODERS)
def test_skip_table_gives_strides_2_to_32(name):
    _check_skips(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in encoder_names() if n not in _FAST_ENCODERS])
def test_skip_table_gives_strides_2_to_32_every_size(name):
    _check_skips(name)


def _check_skips(name):
    encoder = build_encoder(name, input_shape=(64, 96, 3))
    assert [tuple(f.shape[1:3]) for f in encoder.outputs] == [(64 // s, 96 // s) for s in STRIDES]
    assert all(len(family.skips) == len(STRIDES) for family in FAMILIES)
    with pytest.raises(ValueError, match="unknown encoder 'resnet34'"):
        build_encoder("resnet34", input_shape=SHAPE)


def _model(segmenters, classifiers, name):
    return classifiers["both"] if name == "classifier" else segmenters[name]


# unetpp_ds holds every op the other builders use (encoder, upsampling, concat, BN, heads, mean); the rest
# compile in the slow run.
@pytest.mark.parametrize(
    "name",
    ["unetpp_ds", pytest.param("unet", marks=pytest.mark.slow), pytest.param("classifier", marks=pytest.mark.slow)],
)
def test_forward_compiles_with_xla(segmenters, classifiers, name):
    model = _model(segmenters, classifiers, name)
    images = _images(seed=1)
    compiled = tf.function(lambda x: _flat(model(x, training=False)), jit_compile=True)(images)
    for got, want in zip(compiled, _flat(model(images, training=False))):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unetpp_ds", "classifier"])
def test_gradients_compile_with_xla(segmenters, classifiers, name):
    model = _model(segmenters, classifiers, name)

    @tf.function(jit_compile=True)
    def grads(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(out) for out in _flat(model(x, training=True))])
        return tape.gradient(loss, model.trainable_variables)

    assert all(g is not None and bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads(_images(seed=1)))


def test_upsample2x_is_nearest_neighbour_upsampling_with_an_xla_gradient():
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype("float32"))
    expected = keras.layers.UpSampling2D(2, interpolation="nearest")(x)
    np.testing.assert_array_equal(Upsample2x()(x), expected)
    assert Upsample2x().compute_output_shape((None, None, 7, 4)) == (None, None, 14, 4)

    weights = tf.reshape(tf.range(2 * 6 * 10 * 4, dtype=tf.float32), (2, 6, 10, 4))

    @tf.function(jit_compile=True)
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(Upsample2x()(x) * weights)
        return tape.gradient(loss, x)

    # Each input pixel's gradient is the sum of the weights of its 2x2 copies.
    blocks = weights.numpy().reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4))
    np.testing.assert_allclose(grad(x), blocks)


def test_deep_supervision_output_is_mean_of_four_heads(segmenters):
    model = segmenters["unetpp_ds"]
    heads = keras.Model(model.input, [model.get_layer(f"masks_x0{j}").output for j in range(1, 5)])
    images = _images(seed=2)
    per_head = [h.numpy() for h in heads(images, training=False)]
    assert all(h.shape == (BATCH, *SHAPE[:2], 4) for h in per_head)
    # The heads really differ, so the mean is not trivially any one of them.
    assert np.abs(per_head[0] - per_head[3]).max() > 1e-4
    np.testing.assert_allclose(model(images, training=False).numpy(), np.mean(per_head, axis=0), atol=1e-6)
    with pytest.raises(ValueError):
        segmenters["unetpp"].get_layer("masks_x01")


def test_parameter_counts_grow_with_decoder(segmenters, classifiers):
    encoder = build_encoder("efficientnetb0", input_shape=SHAPE).count_params()
    unet, unetpp, unetpp_ds = (segmenters[k].count_params() for k in ("unet", "unetpp", "unetpp_ds"))
    assert encoder < unet < unetpp < unetpp_ds
    # The tiny decoder adds well under a million weights to the 4.05 M of EfficientNetB0.
    assert 4.0e6 < encoder < 4.1e6 and unetpp_ds - encoder < 1e6
    assert classifiers["both"].count_params() == encoder + 1280 * 5 + 5


def test_random_init_encoder_refuses_pretrained_weights():
    # Before any fetch: plaincnn has no ImageNet weights to fall back from, so asking for them is a config error.
    with pytest.raises(ValueError, match="plaincnn has no pretrained weights"):
        build_encoder("plaincnn", input_shape=SHAPE, weights="imagenet")


def test_resolve_weights_rejects_unknown_choice():
    with pytest.raises(ValueError, match="weights must be one of .* for efficientnetb0, got 'imagenet21k'"):
        build_encoder("efficientnetb0", input_shape=SHAPE, weights="imagenet21k")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Make every urllib fetch fail fast and locally: a proxy on a closed loopback port, an empty keras cache."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port}")
    # urlopen caches its opener (and so the proxy settings) on first use; rebuild it from the env above.
    monkeypatch.setattr(urllib.request, "_opener", None)
    # A weights file already in ~/.keras/models would skip the fetch this test is about.
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path))


def test_imagenet_unreachable_falls_back_with_one_line(offline, capsys):
    encoder = build_encoder("efficientnetb0", input_shape=(32, 32, 3), weights="imagenet", allow_random=True)
    assert len(encoder.outputs) == 5
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("steel_tpu:")]
    assert len(warnings) == 1 and "imagenet weights for efficientnetb0" in warnings[0]
    assert "random init" in warnings[0]


def test_imagenet_unreachable_without_fallback_raises(offline):
    with pytest.raises(RuntimeError, match="could not fetch imagenet weights for efficientnetb0"):
        build_encoder("efficientnetb0", input_shape=(32, 32, 3), weights="imagenet", allow_random=False)


def test_resolve_weights_lets_real_bugs_through():
    def broken(resolved):
        raise KeyError("not a download failure")

    with pytest.raises(KeyError):
        resolve_weights("imagenet", name="x", build=broken, allow_random=True)


def test_missing_sm_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models", None)
    with pytest.raises(ImportError, match=r"pip install steel_tpu\[sm\]"):
        build_sm(arch="fpn", backbone="resnet18", input_shape=SHAPE)


@pytest.fixture(scope="module")
def sm_models():
    return {
        arch: build_segmenter(arch=arch, encoder="resnet18", input_shape=SHAPE)
        for arch in ("sm-unet", "sm-fpn", "sm-linknet")
    }


@needs_sm
@pytest.mark.parametrize("arch", ["sm-unet", "sm-fpn", "sm-linknet"])
def test_sm_families_output_float32_masks(sm_models, arch):
    masks = sm_models[arch](_images(), training=False)
    assert masks.shape == (BATCH, *SHAPE[:2], 4) and masks.dtype == tf.float32


@needs_sm
def test_sm_compiles_with_xla_and_keeps_float32_under_bfloat16(sm_models):
    compiled = tf.function(lambda x: sm_models["sm-fpn"](x, training=False), jit_compile=True)(_images())
    # Random-init ResNet logits are large, so XLA's and oneDNN's float orderings differ by ~1e-3 here.
    np.testing.assert_allclose(compiled.numpy(), sm_models["sm-fpn"](_images(), training=False).numpy(), atol=1e-2)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_sm(arch="linknet", backbone="resnet18", input_shape=SHAPE)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model(_images(), training=False).dtype == tf.float32


@needs_sm
def test_sm_preprocessing_table_matches_segmentation_models():
    sm = import_sm()
    assert sorted(sm.get_available_backbone_names()) == sorted(b for names in PREPROCESSING.values() for b in names)
    images = np.random.default_rng(3).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    for backbone in sm.get_available_backbone_names():
        want = sm.get_preprocessing(backbone)(images.copy())  # numpy path: no graph-cached constants
        got = SmPreprocess(preprocessing_mode(backbone))(tf.constant(images)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=backbone)


@needs_sm
@pytest.mark.slow
def test_sm_model_saves_and_loads(tmp_path):
    model = build_segmenter(arch="sm-unet", encoder="efficientnetb0", input_shape=SHAPE)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(_images()).numpy(), model(_images()).numpy(), atol=1e-6)


def test_batchnorm_momentum_reaches_nested_encoder_layers():
    model = build_classifier(encoder="efficientnetb0", input_shape=(64, 64, 3))
    count = set_batchnorm_momentum(model, 0.9)
    norms = [layer for layer in model.get_layer("efficientnetb0_encoder").layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert count == len(norms) > 40
    assert {layer.momentum for layer in norms} == {0.9}
