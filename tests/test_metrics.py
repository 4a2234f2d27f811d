"""Known-answer tests of the metric maths (FID/KID/IS via torch-fidelity, intra-LPIPS, CLIP score).

Networks here are random (Inception, LPIPS backbone) or tiny; they test the plumbing and the maths, never
a reported number. No test downloads anything: TORCH_HOME points at an empty folder and IPL_OFFLINE=1.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from ipl.core.errors import CheckpointError, WeightsNotFoundError
from ipl.metrics import fid as fidlib
from ipl.metrics.clip_score import ClipScore, clip_scores
from ipl.metrics.lpips_diversity import (fit_images, intra_cluster_lpips, load_lpips, lpips_features,
                                         lpips_matrix)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("IPL_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small convolutions on a shared 2-core box: one thread avoids OpenMP spin contention (10x here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# FID / KID / IS on features we feed (torch-fidelity's maths).

def _closed_form_fid(mu1, s1, mu2, s2):
    """Frechet distance between N(mu1, s1) and N(mu2, s2), with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_against_itself_is_zero():
    f = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    assert abs(fidlib.frechet_distance(f, f)) < 1e-6
    # ... and a shifted copy is exactly |shift|^2 away (same covariance).
    shift = torch.full((24,), 0.5)
    assert fidlib.frechet_distance(f, f + shift) == pytest.approx(24 * 0.25, rel=1e-6)


def test_fid_matches_gaussian_closed_form():
    g = torch.Generator().manual_seed(1)
    d = 8
    a = torch.randn(d, d, generator=g) / d ** 0.5
    b = torch.randn(d, d, generator=g) / d ** 0.5
    mu1, mu2 = torch.zeros(d), torch.linspace(-1, 1, d)
    s1, s2 = a @ a.T + 0.5 * torch.eye(d), b @ b.T + 0.2 * torch.eye(d)
    n = 20000
    x = mu1 + torch.randn(n, d, generator=g) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n, d, generator=g) @ torch.linalg.cholesky(s2).T
    got = fidlib.frechet_distance(x, y)
    # Exact on the sample statistics (independent square root) ...
    xs, ys = x.double().numpy(), y.double().numpy()
    on_samples = _closed_form_fid(xs.mean(0), np.cov(xs, rowvar=False), ys.mean(0), np.cov(ys, rowvar=False))
    assert got == pytest.approx(on_samples, rel=1e-6)
    # ... and close to the population value.
    population = _closed_form_fid(mu1.double().numpy(), s1.double().numpy(), mu2.double().numpy(),
                                  s2.double().numpy())
    assert got == pytest.approx(population, rel=0.05)
    assert population > 1.0


def test_kid_matches_unbiased_mmd_with_cubic_kernel():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 5, generator=g)
    y = torch.randn(60, 5, generator=g) + 0.7
    mean, std, size = fidlib.kernel_distance(x, y, subset_size=1000, subsets=3)
    assert size == 60 and std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set
    xs, ys = x.double().numpy(), y.double().numpy()
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    m = len(xs)
    kxx, kyy, kxy = k(xs, xs), k(ys, ys), k(xs, ys)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    assert mean == pytest.approx(expected, rel=1e-9)
    near, _, _ = fidlib.kernel_distance(x, torch.randn(60, 5, generator=g), subset_size=30, subsets=20)
    assert near < mean


def test_inception_score_known_answers():
    classes = 10
    confident = torch.full((200, classes), -30.0)
    confident[torch.arange(200), torch.arange(200) % classes] = 30.0
    mean, _ = fidlib.inception_score(confident, splits=1)
    assert mean == pytest.approx(classes, rel=1e-3)       # sharp and uniformly spread: IS = #classes
    collapsed = torch.zeros(200, classes)
    collapsed[:, 3] = 30.0
    mean, _ = fidlib.inception_score(collapsed, splits=2)
    assert mean == pytest.approx(1.0, abs=1e-6)           # one class only: IS = 1


@pytest.mark.slow
def test_inception_random_weights_pipeline_runs_and_self_fid_is_zero():
    """RANDOM Inception weights (clearly not a result): the streaming extractor path end to end."""
    net, info = fidlib.load_inception(["2048", "logits_unbiased"], allow_random=True, download=False)
    assert info.random_weights and info.path is None
    imgs = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    feats = fidlib.InceptionFeatures(net)
    feats.update(imgs[:4])
    feats.update(imgs[4:])
    assert len(feats) == 6 and feats.features("2048").shape == (6, 2048)
    assert abs(fidlib.frechet_distance(feats.features("2048"), feats.features("2048"))) < 1e-3
    # Same images -> same features, whatever the batching.
    again = fidlib.InceptionFeatures(net)
    again.update(imgs)
    torch.testing.assert_close(again.features("2048"), feats.features("2048"), rtol=1e-4, atol=1e-5)


def test_quantize_rounds_like_8bit_png():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.7]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    q = fidlib.quantize(x)[0, 0, 0].tolist()
    assert q == [0, 0, 128, 191, 255, 255]
    u = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(fidlib.quantize(u.float() / 127.5 - 1), u)   # uint8 -> [-1, 1] -> uint8 is exact


def test_missing_inception_weights_name_file_and_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        fidlib.load_inception(["2048"], download=True)
    msg = str(e.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg and "--inception-weights" in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        fidlib.load_inception(["2048"], weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="could not be loaded"):
        fidlib.load_inception(["2048"], weights=str(bad))


# ----------------------------------------------------------------------------------------------------------
# LPIPS (RANDOM backbone, package linear layers): the maths, not the numbers.

@pytest.fixture(scope="module")
def random_lpips():
    model, path = load_lpips("alex", allow_random=True, download=False)
    assert path is None
    return model


def test_lpips_matrix_equals_package_forward(random_lpips):
    g = torch.Generator().manual_seed(4)
    a = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    b = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    mat = lpips_matrix(random_lpips, lpips_features(random_lpips, a), lpips_features(random_lpips, b))
    assert mat.shape == (3, 4)
    with torch.no_grad():
        ref = torch.stack([torch.stack([random_lpips(a[i:i + 1], b[j:j + 1]).flatten()[0] for j in range(4)])
                           for i in range(3)])
    torch.testing.assert_close(mat.float(), ref, rtol=1e-4, atol=1e-6)
    assert (ref > 0).all()


def test_intra_lpips_is_zero_for_identical_images_and_grows_with_noise(random_lpips):
    g = torch.Generator().manual_seed(5)
    base = torch.rand(1, 3, 48, 48, generator=g) * 2 - 1
    same = base.expand(24, 3, 48, 48).clone()
    r = intra_cluster_lpips(random_lpips, same, same[:10], batch=7)
    assert r.value == pytest.approx(0.0, abs=1e-9)
    assert sum(r.cluster_sizes) == 24 and r.pairs == 24 * 23 // 2   # ties: all join the first centre
    values = []
    for sigma in (0.02, 0.1, 0.4):
        noisy = (base + sigma * torch.randn(24, 3, 48, 48, generator=g)).clamp(-1, 1)
        r = intra_cluster_lpips(random_lpips, noisy, noisy[:10], batch=7)
        assert sum(r.cluster_sizes) == 24 and r.clusters_used >= 1
        values.append(r.value)
    assert 0 < values[0] < values[1] < values[2]


def test_intra_lpips_clusters_by_nearest_centre(random_lpips):
    """Two tight groups around two distinct centres: each sample joins its own group's centre."""
    g = torch.Generator().manual_seed(6)
    c = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    members = torch.cat([(c[k] + 0.05 * torch.randn(5, 3, 32, 32, generator=g)).clamp(-1, 1) for k in (0, 1)])
    r = intra_cluster_lpips(random_lpips, members, c, batch=3)
    assert r.cluster_sizes == [5, 5] and r.pairs == 2 * 10
    # The value is the mean of the two within-cluster pair means, computed here pair by pair.
    with torch.no_grad():
        per = [np.mean([float(random_lpips(members[i:i + 1], members[j:j + 1]))
                        for i, j in itertools.combinations(range(5 * k, 5 * k + 5), 2)]) for k in (0, 1)]
    assert r.value == pytest.approx(float(np.mean(per)), rel=1e-4)


def test_lpips_backbone_loads_from_local_file_and_rejects_wrong_files(tmp_path):
    """SqueezeNet (5 MB) stands in for AlexNet: same torchvision-file -> lpips-slices mapping, faster to write."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        tv = torchvision.models.squeezenet1_1(weights=None)
    path = tmp_path / "squeezenet1_1-b8a52dc0.pth"
    torch.save(tv.state_dict(), path)
    model, used = load_lpips("squeeze", weights=str(path))
    assert used == str(path)
    params = dict(model.net.named_parameters())
    for name, p in tv.features.named_parameters():          # every backbone tensor arrived, in its slot
        index, rest = name.split(".", 1)
        slot = [k for k in params if k.split(".", 1)[1] == f"{index}.{rest}"]
        assert len(slot) == 1, name
        torch.testing.assert_close(params[slot[0]], p, rtol=0, atol=0)
    # The hub cache is where torchvision would have put it: found there too, without --lpips-weights.
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / path.name).write_bytes(path.read_bytes())
    _, used = load_lpips("squeeze")
    assert used == str(hub / path.name)
    _, used = load_lpips("squeeze", allow_random=True)     # real weights win whenever they are there
    assert used == str(hub / path.name)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_lpips("squeeze", weights=str(bad))


def test_missing_lpips_backbone_names_file_and_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        load_lpips("alex")
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "https://download.pytorch.org/models/" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg and "--lpips-weights" in msg


def test_fit_images_resizes_shorter_side_and_centre_crops():
    x = torch.zeros(1, 3, 40, 80)
    x[..., 10:70] = 1.0  # white except the outer 10 px on each side
    y = fit_images(x, 20)
    assert y.shape == (1, 3, 20, 20)
    assert y.min() > 0.99  # the centre crop holds only the white part
    u = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(fit_images(u, 16), u.float() / 127.5 - 1)


# ----------------------------------------------------------------------------------------------------------
# CLIP score.

def test_clip_scores_from_features_known_answers():
    text = torch.tensor([3.0, 0.0, 0.0, 0.0])
    img = torch.tensor([[2.0, 0, 0, 0], [0, 5.0, 0, 0], [-1.0, 0, 0, 0], [1.0, 1.0, 0, 0]])
    got = clip_scores(img, text)
    torch.testing.assert_close(got, torch.tensor([100.0, 0.0, -100.0, 100 / 2 ** 0.5]))
    torch.testing.assert_close(clip_scores(img, text[None]), got)


def _toy_clip():
    from ipl.method.clip import TOY_CLIP_CONFIG, TOY_CLIP_WEIGHTS, load_clip

    if not (TOY_CLIP_CONFIG.is_file() and TOY_CLIP_WEIGHTS.is_file()):   # shipped package data: fail, never skip
        pytest.fail(f"shipped toy CLIP assets missing ({TOY_CLIP_CONFIG}, {TOY_CLIP_WEIGHTS})", pytrace=False)
    return load_clip("toy")


def test_clip_score_with_toy_clip_prefers_matching_captions():
    """The shipped (trained) toy CLIP: dark renders score higher with their caption than with the source
    caption, and higher than solid renders do with the same caption (what a CLIP score must show)."""
    clip = _toy_clip()
    from ipl.generators.toy.render import render, sample_params

    p = sample_params(32, generator=torch.Generator().manual_seed(8))
    dark, solid = render(p, "dark", res=32), render(p, "solid", res=32)

    def score(images, text):
        s = ClipScore(clip, text)
        s.update(images[:20])
        s.update(images[20:])
        return s.compute()

    target, source = "on a dark background", "a solid shape"
    assert score(dark, target)["clip_score"] > score(dark, source)["clip_score"] + 5
    assert score(dark, target)["clip_score"] > score(solid, target)["clip_score"] + 5
    assert score(dark, target)["clip_model"] == "toy"
