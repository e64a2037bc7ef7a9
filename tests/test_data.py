import gzip
import math
import re
import struct

import numpy as np
import pytest
import torch
from support.inputs import write_dataset

from lstmclf.data import (
    BatchLoader,
    build_splits,
    encode_idx,
    load_splits,
    load_test,
    parse_idx,
    prepare_dataset,
    random_shift,
    random_warp,
    read_arrays,
)
from lstmclf.data.dataset import stratified_take
from lstmclf.data.sample import NAMES
from lstmclf.errors import DataError


def test_idx_round_trip_gzipped_and_raw():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        assert np.array_equal(parse_idx(encode_idx(a, compress=compress), "x"), a)
    b = np.arange(5, dtype=np.int32)
    assert np.array_equal(parse_idx(encode_idx(b), "x"), b)


def test_reads_the_bundled_sample_with_classes_kept():
    s = load_splits()
    assert (len(s.train), len(s.val), len(s.test), s.num_classes, s.image_shape) == (5400, 600, 1000, 10, (1, 28, 28))
    assert s.train.images.dtype == np.uint8
    val_share = np.bincount(s.val.labels, minlength=10) / np.bincount(s.train.labels, minlength=10)
    assert np.allclose(val_share, 600 / 5400, atol=0.01)  # stratified
    assert 0.1 < s.mean < 0.16 and 0.28 < s.std < 0.34  # MNIST's known pixel statistics


def test_split_is_seeded_and_disjoint(tmp_path):
    arrays = write_dataset(tmp_path / "d", n_train=100, classes=5)
    a = build_splits(arrays, val_fraction=0.2, seed=1)
    b = build_splits(arrays, val_fraction=0.2, seed=1)
    c = build_splits(arrays, val_fraction=0.2, seed=2)
    assert np.array_equal(a.val.images, b.val.images) and not np.array_equal(a.val.images, c.val.images)
    assert len(a.val) == 20 and np.array_equal(np.bincount(a.val.labels), [4] * 5)
    rows = {r.tobytes() for r in a.train.images} | {r.tobytes() for r in a.val.images}
    assert len(rows) == 100  # every training image in exactly one split


def test_no_validation_split_trains_on_every_training_image(tmp_path):
    arrays = write_dataset(tmp_path / "d", n_train=100, classes=5)
    s = build_splits(arrays, val_fraction=0.0)
    assert len(s.val) == 0 and s.val.images.shape == (0, *arrays["train_images"].shape[1:])
    assert np.array_equal(s.train.images, arrays["train_images"]) and np.array_equal(
        s.train.labels, arrays["train_labels"]
    )
    assert s.mean == pytest.approx(arrays["train_images"].mean(dtype=np.float64) / 255.0)  # over all of them
    with pytest.raises(DataError, match=r"cannot give a validation split of 0\.001$"):
        build_splits(arrays, val_fraction=0.001)  # rounds to no image: a split was asked for, none fits


def test_stratified_take_keeps_proportions_and_total():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    taken, rest = stratified_take(labels, 10, seed=0)
    assert len(taken) == 10 and len(rest) == 90 and not set(taken) & set(rest)
    assert np.array_equal(np.bincount(labels[taken]), [5, 3, 2])


def test_limits_take_stratified_subsets():
    s = load_splits(limit_train=1000, limit_test=200)
    assert len(s.train) + len(s.val) == 1000 and len(s.test) == 200
    assert np.bincount(s.test.labels).min() >= 15


def test_any_image_size_and_class_count(tmp_path):
    write_dataset(tmp_path / "d", hw=(20, 32), classes=7, n_train=70)
    s = load_splits(str(tmp_path / "d"))
    assert s.image_shape == (1, 20, 32) and s.num_classes == 7


def test_prefixed_file_names_are_found(tmp_path):
    arrays = write_dataset(tmp_path / "d")
    for p in (tmp_path / "d").iterdir():
        p.rename(p.with_name("emnist-digits-" + p.name))
    assert np.array_equal(read_arrays(str(tmp_path / "d"))["train_labels"], arrays["train_labels"])


def header(ndim_dims, code=0x08):
    return struct.pack(">HBB", 0, code, len(ndim_dims)) + struct.pack(f">{len(ndim_dims)}I", *ndim_dims)


good_images = encode_idx(np.zeros((40, 28, 28), np.uint8), compress=False)


@pytest.mark.parametrize(
    ("role", "raw", "message"),
    [
        ("train_images", good_images[:-100], "train-images-idx3-ubyte.gz: truncated, 31260 bytes of data"),
        ("train_images", gzip.compress(good_images)[:-30], "truncated or corrupt gzip data"),
        ("train_images", b"\x12\x34\x08\x03" + good_images[4:], "bad IDX magic number 0x12340803"),
        ("train_images", b"", "file is empty"),
        ("train_images", header([0, 28, 28]), "holds no items"),
        ("train_images", good_images + b"\0\0", "2 unexpected bytes after the data"),
        ("train_images", header([40, 28, 28], code=0x0C) + bytes(40 * 28 * 28 * 4), "element type >i4"),
        ("train_labels", encode_idx(np.zeros((40, 2), np.uint8)), "2 dimensions [40, 2], expected 1"),
        ("train_labels", encode_idx(np.zeros(39, np.uint8)), "40 train images but 39 train labels"),
        ("test_images", encode_idx(np.zeros((20, 28, 27), np.uint8)), "test images are (28, 27)"),
    ],
)
def test_broken_files_give_clear_errors(tmp_path, role, raw, message):
    write_dataset(tmp_path / "d", **{role: raw})
    with pytest.raises(DataError) as e:
        load_splits(str(tmp_path / "d"))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_labels_out_of_range(tmp_path):
    write_dataset(tmp_path / "d", classes=4)
    with pytest.raises(DataError, match=r"train labels: label 3 at index 3 is out of range \[0, 3\)"):
        load_splits(str(tmp_path / "d"), num_classes=3)
    bad = encode_idx(np.full(20, 9, np.uint8))
    write_dataset(tmp_path / "e", classes=4, test_labels=bad)  # train says 4 classes, test has label 9
    with pytest.raises(DataError, match=r"test labels: label 9 at index 0 is out of range \[0, 4\)"):
        load_splits(str(tmp_path / "e"))


def test_missing_files_and_dirs(tmp_path):
    write_dataset(tmp_path / "d")
    (tmp_path / "d" / NAMES["test_labels"]).unlink()
    with pytest.raises(DataError, match="no file matching t10k-labels"):
        load_splits(str(tmp_path / "d"))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(str(tmp_path / "nowhere"))


def test_the_test_split_alone_reads_only_the_test_files(tmp_path):
    assert all(
        np.array_equal(getattr(load_test(num_classes=10), k), getattr(load_splits().test, k))
        for k in ("images", "labels")
    )
    arrays = write_dataset(tmp_path / "d", train_images=b"not read")  # only the full reader trips on it
    with pytest.raises(DataError, match="bad IDX magic number"):
        load_splits(str(tmp_path / "d"))
    test = load_test(str(tmp_path / "d"), num_classes=4)
    assert np.array_equal(test.images, arrays["test_images"]) and np.array_equal(test.labels, arrays["test_labels"])
    with pytest.raises(
        DataError,
        match=rf"^dataset {tmp_path}/d test labels: label 3 at index 3 is out of range "
        r"\[0, 3\) \(5 such labels\)$",
    ):
        load_test(str(tmp_path / "d"), num_classes=3)  # the checkpoint's classes, not inferred

    for case, message in [
        ({"test_labels": encode_idx(np.zeros(19, np.uint8))}, "20 test images but 19 test labels"),
        ({"test_images": header([0, 28, 28])}, "holds no items"),
        ({"hw": (28, 6)}, r"images of \(28, 6\) are smaller than 8x8"),
    ]:
        write_dataset(tmp_path / "broken", **case)
        for read in (lambda d: load_splits(d), lambda d: load_test(d, num_classes=4)):  # the same checks, same words
            with pytest.raises(DataError, match=message):
                read(str(tmp_path / "broken"))
    (tmp_path / "d" / NAMES["test_labels"]).unlink()
    with pytest.raises(DataError, match="no file matching t10k-labels"):
        load_test(str(tmp_path / "d"), num_classes=4)


def test_the_test_split_alone_is_verified_by_the_manifest(tmp_path):
    write_dataset(tmp_path / "src")
    prepare_dataset(str(tmp_path / "src"), str(tmp_path / "pub"))
    assert len(load_test(str(tmp_path / "pub"), num_classes=4)) == 20
    name = NAMES["test_images"]
    (tmp_path / "pub" / name).write_bytes(encode_idx(np.ones((20, 28, 28), np.uint8)))  # valid IDX, other data
    for read in (lambda: load_splits(str(tmp_path / "pub")), lambda: load_test(str(tmp_path / "pub"), num_classes=4)):
        with pytest.raises(
            DataError,
            match=rf"^dataset {tmp_path}/pub: {re.escape(name)} does not match the sha256 in "
            r"its manifest.json \(corrupt or replaced\)$",
        ):
            read()


def test_force_replaces_a_dataset_without_leaving_its_old_files(tmp_path):
    write_dataset(tmp_path / "gz", classes=4)  # gzipped names
    raw = write_dataset(tmp_path / "raw", n_train=60, classes=5, seed=1)
    for p in (tmp_path / "raw").iterdir():  # the same data set, as plain IDX: other names
        p.with_name(p.name.removesuffix(".gz")).write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    dest = tmp_path / "pub"
    assert prepare_dataset(str(tmp_path / "gz"), str(dest))[1]
    (dest / "notes.txt").write_text("not part of the dataset")
    with pytest.raises(DataError, match="already holds another dataset"):
        prepare_dataset(str(tmp_path / "raw"), str(dest))
    manifest, uploaded = prepare_dataset(str(tmp_path / "raw"), str(dest), force=True)
    assert uploaded and manifest["num_classes"] == 5
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["manifest.json", "notes.txt", *(n.removesuffix(".gz") for n in NAMES.values())]
    )
    s = load_splits(str(dest))  # one file per role again, each matching the manifest
    assert s.num_classes == 5 and len(s.train) + len(s.val) == 60 and np.array_equal(s.test.labels, raw["test_labels"])

    stray = tmp_path / "stray"  # IDX files but no manifest: not ours to delete unless forced
    write_dataset(stray)
    with pytest.raises(
        DataError,
        match=rf"^{stray} already holds IDX files \(.*t10k-images-idx3-ubyte.gz.*\) without "
        r"a manifest.json; choose another destination or --force$",
    ):
        prepare_dataset(str(tmp_path / "raw"), str(stray))
    assert prepare_dataset(str(tmp_path / "raw"), str(stray), force=True)[1]
    assert sorted(p.name for p in stray.iterdir()) == sorted(
        ["manifest.json", *(n.removesuffix(".gz") for n in NAMES.values())]
    )


def loader_batches(n, world, batch, shuffle):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 8, 8).contiguous()
    labels = torch.arange(n)
    out = []
    for rank in range(world):
        loader = BatchLoader(
            images, labels, batch, mean=0.0, std=1 / 255, shuffle=shuffle, seed=3, rank=rank, world_size=world
        )
        loader.set_epoch(1)
        out.append([y for _, y in loader])
        assert len(out[-1]) == len(loader)
    return out


def test_training_shards_have_equal_batch_counts_and_do_not_overlap():
    shards = loader_batches(n=103, world=3, batch=8, shuffle=True)
    assert len({len(s) for s in shards}) == 1  # equal batch counts: DDP never waits on a short rank
    seen = torch.cat([torch.cat(s) for s in shards])
    assert len(seen) == 102 and len(set(seen.tolist())) == 102  # 103 // 3 * 3, no duplicates


def test_eval_shards_cover_every_item_once():
    shards = loader_batches(n=103, world=3, batch=8, shuffle=False)
    assert sorted(torch.cat([torch.cat(s) for s in shards]).tolist()) == list(range(103))


def test_epochs_reshuffle_deterministically():
    images = torch.zeros(50, 8, 8, dtype=torch.uint8)
    loader = BatchLoader(images, torch.arange(50), 50, mean=0.0, std=1.0, shuffle=True, seed=0)
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        orders.append(next(iter(loader))[1].tolist())
    assert orders[0] == orders[2] != orders[1]


def test_batches_are_normalised_with_the_given_statistics():
    images = torch.full((4, 8, 8), 51, dtype=torch.uint8)
    x, _ = next(iter(BatchLoader(images, torch.zeros(4, dtype=torch.long), 4, mean=0.1, std=0.2)))
    assert x.shape == (4, 1, 8, 8) and torch.allclose(x, torch.full_like(x, (0.2 - 0.1) / 0.2))


def test_random_shift_moves_each_image_by_its_own_offset():
    img = torch.zeros(64, 9, 9, dtype=torch.uint8)
    img[:, 4, 4] = 255
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    pos = (out == 255).nonzero()[:, 1:] - 4  # (B, 2) offsets of the single bright pixel
    assert out.shape == img.shape and len(pos) == 64  # nothing fell off the edge at shift 2
    assert pos.abs().max() <= 2 and len({tuple(p) for p in pos.tolist()}) > 10


def orientation_and_size(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (H,W) image's principal-axis angle (degrees, from its second moments) and total intensity."""
    _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    m = images.double()
    mass = m.sum(dim=(1, 2))
    cy, cx = (m * ys).sum(dim=(1, 2)) / mass, (m * xs).sum(dim=(1, 2)) / mass
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    myy, mxx, mxy = ((m * d).sum(dim=(1, 2)) / mass for d in (dy * dy, dx * dx, dx * dy))
    return torch.rad2deg(0.5 * torch.atan2(2 * mxy, mxx - myy)), mass


def test_random_warp_rotates_and_scales_each_image_by_its_own_draw():
    bar = torch.zeros(256, 28, 28)
    bar[:, 13:15, 6:22] = 255.0  # a horizontal bar through the centre: orientation 0 degrees
    same = random_warp(bar, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(same, bar, atol=1e-3)  # no rotation, no scaling: the images as they were

    out = random_warp(bar, 20.0, 0.0, torch.Generator().manual_seed(1))
    angle, mass = orientation_and_size(out)
    assert angle.abs().max() <= 20.5 and angle.abs().max() > 15 and angle.std() > 5  # each its own angle
    assert torch.allclose(mass, mass[0].expand_as(mass), rtol=0.05)  # rotation keeps the bar whole
    assert torch.equal(out, random_warp(bar, 20.0, 0.0, torch.Generator().manual_seed(1)))  # seeded

    _, mass = orientation_and_size(random_warp(bar, 0.0, 0.2, torch.Generator().manual_seed(2)))
    ratio = mass / bar[0].sum()  # a bar's area grows with the scale twice (length, width; bilinear blurs its edges)
    assert ratio.min() >= 0.8**2 - 0.1 and ratio.max() <= 1.2**2 + 0.1 and ratio.max() - ratio.min() > 0.4


def test_elastic_warp_moves_pixels_by_a_smooth_field_of_the_stated_size():
    # On a ramp whose value is its x coordinate, bilinear sampling is exact: the output minus the input
    # is each pixel's x displacement, in pixels.
    ramp = torch.arange(28.0).expand(64, 28, 28).clone()
    same = random_warp(ramp, 0.0, 0.0, torch.Generator().manual_seed(0), elastic=0.0)
    assert torch.allclose(same, ramp, atol=1e-4)  # off: the images as they were

    out = random_warp(ramp, 0.0, 0.0, torch.Generator().manual_seed(0), elastic=34.0, elastic_sigma=4.0)
    dx = (out - ramp)[:, 8:20, 8:20]  # interior: the zero fill at the border stays out of it
    rms = dx.pow(2).mean().sqrt().item()
    expected = 34.0 * (1 / 3) ** 0.5 / ((4 * math.pi) ** 0.5 * 4.0)  # elastic * std(U[-1,1]) / (2 sqrt(pi) sigma)
    assert 0.7 * expected < rms < 1.3 * expected, (rms, expected)
    # Smooth: neighbouring pixels move almost together, unlike the raw noise.
    assert torch.corrcoef(torch.stack([dx[:, :, :-1].flatten(), dx[:, :, 1:].flatten()]))[0, 1] > 0.9
    assert dx.flatten(1).std(dim=1).min() > 0  # every image its own field
    again = random_warp(ramp, 0.0, 0.0, torch.Generator().manual_seed(0), elastic=34.0, elastic_sigma=4.0)
    assert torch.equal(out, again)  # seeded
    half = random_warp(ramp, 0.0, 0.0, torch.Generator().manual_seed(0), elastic=17.0, elastic_sigma=4.0)
    assert torch.allclose((half - ramp)[:, 8:20, 8:20], dx / 2, atol=1e-3)  # linear in elastic


def test_training_batches_are_augmented_only_when_asked():
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    images[:, 13:15, 6:22] = 255
    labels = torch.zeros(64, dtype=torch.long)

    def batch(**aug):
        loader = BatchLoader(images, labels, 64, mean=0.0, std=1.0, shuffle=True, seed=3, **aug)
        return next(iter(loader))[0][:, 0]

    assert torch.equal(batch(), images.float() / 255)
    angle, _ = orientation_and_size(batch(rotate=30.0))
    assert angle.abs().max() > 10 and angle.abs().max() <= 30.5
    assert torch.equal(batch(rotate=30.0, scale=0.1), batch(rotate=30.0, scale=0.1))
    # The elastic distortion alone bends the bar (thinner here, thicker there: its mass varies per image
    # but not on average), and adding it to a rotation changes the batch.
    bent = batch(elastic=34.0)
    assert not torch.equal(bent, images.float() / 255)
    mass = bent.sum(dim=(1, 2)) / (images[0].float().sum() / 255)
    assert abs(mass.mean().item() - 1) < 0.15 and mass.std() > 0.05
    assert not torch.equal(batch(rotate=30.0, elastic=34.0), batch(rotate=30.0))
