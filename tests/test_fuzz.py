"""Property-based tests: malformed arrays, files, lists and settings end in the library's own
errors (a :class:`~ssn.errors.UserError`: one line and exit code 2 on the command line), never in
another exception."""

import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from ssn import metrics
from ssn.data import load_volume_list
from ssn.data.arrays import load_arrays
from ssn.data.converters import phiseg_hdf5, probabilistic_unet_pickle
from ssn.engine.config import TrainConfig, model_spec
from ssn.errors import ConfigError, DataError, UserError
from ssn.models import build

FUZZ = settings(
    max_examples=int(os.environ.get("SSN_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

dtypes = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_])
small_shapes = array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)


def any_array(dtype_strategy=dtypes):
    return dtype_strategy.flatmap(lambda d: arrays(d, small_shapes))


@FUZZ
@given(images=any_array(), masks=any_array(), patient=st.none() | any_array())
def test_an_npz_of_any_arrays_loads_or_is_refused(tmp_path_factory, images, masks, patient):
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    arrays_ = {"images": images, "masks": masks}
    if patient is not None:
        arrays_["patient"] = patient
    np.savez(path, **arrays_)
    try:
        data = load_arrays(path, cache=False)
    except DataError:
        return
    # what loads is what training needs: (N, C, *S) images and (N, A, *S) masks of one N and S
    assert data.images.ndim >= 3 and data.masks.ndim == data.images.ndim
    assert data.images.shape[0] == data.masks.shape[0] and data.images.shape[2:] == data.masks.shape[2:]


@FUZZ
@given(content=st.binary(max_size=600), zipped=st.booleans())
def test_any_bytes_as_an_npz_are_refused(tmp_path_factory, content, zipped):
    path = tmp_path_factory.mktemp("bytes") / "data.npz"
    if zipped:  # a zip whose members are not arrays
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("images.npy", content)
            archive.writestr("masks.npy", content[::-1])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError):
        load_arrays(path, cache=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
list_keys = st.sampled_from(["training", "validation", "test", "labels", "image", "label", "mask", "id", "sequences"])
volume_lists = st.dictionaries(
    list_keys, json_values | st.lists(st.dictionaries(list_keys, json_values, max_size=4), max_size=3), max_size=5
)


@FUZZ
@given(listing=volume_lists)
def test_any_volume_list_loads_or_is_refused(tmp_path_factory, listing):
    folder = tmp_path_factory.mktemp("list")
    path = folder / "list.json"
    path.write_text(json.dumps(listing))
    try:
        load_volume_list(path)
    except DataError:
        pass


@FUZZ
@given(content=st.binary(max_size=400))
def test_any_bytes_as_a_pickle_or_hdf5_are_refused(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("converters")
    (folder / "data.pickle").write_bytes(content)
    (folder / "data.hdf5").write_bytes(content)
    with pytest.raises(DataError):
        probabilistic_unet_pickle(folder / "data.pickle")
    with pytest.raises(DataError):
        phiseg_hdf5(folder / "data.hdf5")


@FUZZ
@given(
    groups=st.dictionaries(
        st.sampled_from(["train", "val", "test", "other"]),
        st.fixed_dictionaries({}, optional={"images": any_array(), "labels": any_array()}),
        max_size=3,
    )
)
def test_any_phiseg_hdf5_converts_or_is_refused(tmp_path_factory, groups):
    import h5py

    path = tmp_path_factory.mktemp("h5") / "data.hdf5"
    with h5py.File(path, "w") as handle:
        for name, datasets in groups.items():
            group = handle.create_group(name)
            for key, value in datasets.items():
                group.create_dataset(key, data=value)
    try:
        data, split = phiseg_hdf5(path)
    except DataError:
        return
    assert data.masks.max(initial=0) < 256 and sum(len(ids) for ids in split.values()) == len(data)


setting_values = (
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.floats(-2, 2e3)
    | st.just(float("nan"))
    | st.text(max_size=8)
    | st.lists(st.integers(-2, 64), max_size=4)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
)
flag_names = st.sampled_from([f.name for f in TrainConfig.flag_fields() if f.name not in ("data", "out")])


@FUZZ
@given(values=st.dictionaries(flag_names, setting_values, max_size=6))
def test_any_settings_build_a_config_or_are_refused(values):
    try:
        config = TrainConfig(data="d.npz", out="run", **values)
    except ConfigError:
        return
    # what is accepted is in range, and builds a model or is refused then, never deeper in the code
    assert config.batch_size >= 1 and config.lr > 0 and config.mc_samples >= 2
    assert config.epochs is None or config.epochs >= 1
    assert config.features is None or all(isinstance(f, int) for f in config.features)
    config.in_channels, config.spatial_dims = 1, 2
    config.num_classes = config.num_classes or 2
    try:
        build(model_spec(config))
    except ConfigError:
        pass


label_maps = st.integers(2, 4).flatmap(
    lambda c: st.tuples(
        st.just(c),
        arrays(
            np.int64, st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)), elements=st.integers(-1, c)
        ),
    )
)


@FUZZ
@given(samples=label_maps, annotations=any_array(st.sampled_from([np.uint8, np.int64, np.float32])))
def test_metrics_take_label_maps_or_refuse_them_with_a_value_or_type_error(samples, annotations):
    num_classes, maps = samples
    ged = metrics.GeneralizedEnergyDistance(num_classes)
    try:
        ged.update(maps[None], annotations[None] if annotations.ndim else annotations)
    except (ValueError, TypeError) as error:
        assert not isinstance(error, UserError) or str(error)
        return
    value = ged.compute().mean
    assert np.isfinite(value) and -1e-6 <= value <= 2 + 1e-6


flag_values = st.one_of(
    st.integers(-3, 100).map(str),
    st.floats(-5, 5, allow_nan=False).map(lambda v: f"{v:g}"),
    st.sampled_from(["", "nan", "inf", "-1e-3", "abc", "true", "{a: 1}", "[1, 2]", "cuda", "cpu"]),
)
train_flags = st.sampled_from(
    [
        "--batch-size",
        "--lr",
        "--rank",
        "--mc-samples",
        "--epochs",
        "--max-minutes",
        "--max-steps",
        "--val-every",
        "--crop-scale",
        "--ema-decay",
        "--mean-warmup",
        "--model",
        "--method",
        "--lr-schedule",
        "--precision",
        "--device",
        "--workers",
        "--num-classes",
        "--model-kwargs",
        "--checkpoint-minutes",
        "--final-lr",
    ]
)


@FUZZ
@given(flags=st.lists(st.tuples(train_flags, flag_values), max_size=4))
def test_any_train_flags_end_in_one_line_and_exit_code_2(tmp_path_factory, flags):
    """A missing data file: whatever the other flags say, the run stops before writing anything,
    with one line (a bad flag value) or the data error."""
    import contextlib
    import io

    from ssn.apps.cli import main

    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--data", str(out.parent / "missing.npz"), "--out", str(out)]
    for flag, value in flags:
        argv += [flag, value]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse refuses a value of the wrong type itself
            code = exit_.code
    assert code == 2, err.getvalue()
    assert "Traceback" not in err.getvalue() and not out.exists()


@FUZZ
@given(array=any_array(), channels=st.integers(1, 3), spatial_dims=st.integers(2, 3))
def test_any_npy_given_to_sample_reads_or_is_refused(tmp_path_factory, array, channels, spatial_dims):
    from ssn.apps.sample import read_images

    path = tmp_path_factory.mktemp("npy") / "input.npy"
    np.save(path, array)
    try:
        images = read_images(path, channels, spatial_dims)
    except DataError:
        return
    assert images.shape[:2] == (1, channels) and images.ndim == spatial_dims + 2
