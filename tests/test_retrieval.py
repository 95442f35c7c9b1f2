"""Zero-shot retrieval (``eeg2im protocol retrieval``) on a corpus in THINGS-EEG2's release layout,
written by the real converter: the ranking against a top-k reference, a planted encoder through the
real loader, and the protocol run for real (intra- and inter-subject)."""

import pytest
import torch
import torch.nn.functional as F
from test_convert import things_code, things_release
from test_protocols import CONFIG, manifest_column, protocols_html, trained_keys

from eeg2im_scale.cli.main import main as cli_main
from eeg2im_scale.config import load_config
from eeg2im_scale.data.convert import ConvertOptions, convert_things_eeg2
from eeg2im_scale.data.loader import EEGImageLoader
from eeg2im_scale.protocols.evaluate import query_eeg, retrieval_ranks, retrieval_scores
from eeg2im_scale.protocols.stats import binomial_p_value
from eeg2im_scale.protocols.table import read_table

TRAIN_CONCEPTS = [f"{k:05d}_seen{k}" for k in range(1, 7)]
TEST_CONCEPTS = [f"{k:05d}_unseen{k}" for k in range(1, 11)]
CHANNELS, POINTS, TEST_REPS = 17, 128, 4


@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """2 subjects; 6 training concepts × 2 images × 2 repetitions, 10 test concepts × 1 image × 4
    repetitions; every repetition of an image carries its ``things_code``."""
    tmp = tmp_path_factory.mktemp("things")
    images, _ = things_release(tmp, points=POINTS, train_concepts=TRAIN_CONCEPTS, test_concepts=TEST_CONCEPTS,
                               test_reps=TEST_REPS, signal=2.0)
    convert_things_eeg2(tmp / "eeg", images, ConvertOptions(out=tmp / "corpus", samples_per_shard=16),
                        allow_pickle=True)
    return tmp / "corpus"


def data_cfg(root, split_by):
    return load_config(None, [f"data.root={root}", "data.synthesize=false", f"data.split_by={split_by}",
                              "data.image_size=16", "data.batch_size=8"]).data


def test_ranks_match_a_topk_reference_and_not_the_query_order():
    generator = torch.Generator().manual_seed(0)
    candidates = {f"img{k:02d}": torch.randn(8, generator=generator) for k in range(12)}
    names = sorted(candidates)
    own = [names[k % 12] for k in range(30)]
    queries = torch.stack([candidates[i] for i in own]) + 1.5 * torch.randn(30, 8, generator=generator)
    ranks = retrieval_ranks(queries, own, candidates)
    similarity = F.cosine_similarity(queries[:, None], torch.stack([candidates[n] for n in names])[None], dim=2)
    for k in (1, 5):
        top = similarity.topk(k, dim=1).indices
        assert (ranks < k).tolist() == [names.index(image) in top[q].tolist() for q, image in enumerate(own)]
    assert 0 < int((ranks < 1).sum()) < 30  # the noise leaves some queries unretrieved: the test can fail
    order = torch.randperm(30, generator=generator)
    assert torch.equal(retrieval_ranks(queries[order], [own[q] for q in order], candidates), ranks[order])


def planted_encoder(root, split_by, shift: int):
    """An "encoder" that decodes which test image an EEG carries (its code) and returns the
    features of that image (``shift`` = 0) or of another one (``shift`` > 0: a derangement)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 32), torch.nn.Tanh())
    _, _, images = query_eeg(EEGImageLoader(data_cfg(root, split_by), "test", train=False), True)
    features = {image: net(pixels[None].float() / 255)[0].detach() for image, pixels in images.items()}
    image_of_code = [f"test_images/{c}/{c[6:]}_06s.jpg" for c in TEST_CONCEPTS]
    codes = torch.stack([torch.from_numpy(things_code("test", i, CHANNELS, POINTS)) for i in range(len(image_of_code))])

    def embed(eeg):
        decoded = (eeg.flatten(1).double() @ codes.flatten(1).T).argmax(1)
        return torch.stack([features[image_of_code[(j + shift) % len(image_of_code)]] for j in decoded.tolist()])

    return embed, lambda pixels: net(pixels.float() / 255).detach()


@pytest.mark.parametrize("split_by", ["intra:1:release", "inter:2:release"])
def test_a_planted_encoder_retrieves_every_image_and_a_shuffled_one_none(things, split_by):
    embed, image_features = planted_encoder(things, split_by, shift=0)
    scores = retrieval_scores(data_cfg(things, split_by), embed, image_features, average=True, top_k=[1, 5])
    assert (scores.queries, scores.candidates, scores.hits) == (10, 10, {1: 10, 5: 10})  # one subject's 10 images
    trials = retrieval_scores(data_cfg(things, split_by), embed, image_features, average=False, top_k=[1])
    assert (trials.queries, trials.hits) == (10 * TEST_REPS, {1: 10 * TEST_REPS})
    embed, _ = planted_encoder(things, split_by, shift=3)
    shuffled = retrieval_scores(data_cfg(things, split_by), embed, image_features, average=True, top_k=[1, 5])
    assert shuffled.hits[1] == 0 and binomial_p_value(shuffled.hits[5], 10, 5 / 10) > 0.05  # top-5 at chance


def test_queries_average_each_subjects_repetitions_of_an_image(things):
    batches = list(EEGImageLoader(data_cfg(things, "release"), "test", train=False))  # both subjects' test trials
    images, eeg, _ = query_eeg(batches, True)
    trials: dict = {}
    for batch in batches:
        for subject, image, row in zip(batch["subject"].tolist(), batch["image_id"], batch["eeg"]):
            trials.setdefault((subject, image), []).append(row)
    assert len(images) == 20 and all(len(rows) == TEST_REPS for rows in trials.values())
    assert images == [image for _, image in sorted(trials)]  # (subject, image) order, whatever the loader's
    torch.testing.assert_close(eeg, torch.stack([torch.stack(trials[q]).mean(0) for q in sorted(trials)]))
    trial_images, trial_eeg, _ = query_eeg(batches[::-1], False)
    assert len(trial_images) == 2 * 10 * TEST_REPS and torch.equal(trial_eeg, query_eeg(batches, False)[1])


def test_retrieval_protocol_intra_and_inter_subject(things, tmp_path, capsys, tiny_clip):
    """Against a frozen CLIP image tower (a tiny OpenCLIP architecture), as the published THINGS-EEG2 rows retrieve."""
    run_dir = tmp_path / "run"
    common = ["--config", CONFIG, f"data.root={things}", "data.synthesize=false", f"run_dir={run_dir}",
              f"model.teacher.arch=open_clip:{tiny_clip}", "model.teacher.input_size=224", "model.teacher.freeze_trunk=true",
              "protocol.subjects=[1]", "train.teacher.steps=2", "train.highlevel.steps=2"]
    assert cli_main(["protocol", "retrieval", *common, "data.split_by=block", "--dry-run"]) == 2
    assert "zero-shot retrieval needs test concepts never trained on: data.split_by=block" in capsys.readouterr().err
    assert cli_main(["protocol", "retrieval", *common, "data.split_by=release"]) == 0
    table = read_table(run_dir)
    rows = {(r["variant"], r["metric"]): r for r in table["rows"]}
    subjects = manifest_column(things, "subject")
    for mode in ("intra", "inter"):
        for k in (1, 5):
            row = rows[(f"{mode}-subject, subject 1", f"retrieval_top{k}")]
            assert (row["trials"], row["candidates"], row["chance"]) == (10, 10, k / 10)
            assert row["mode"] == mode and row["subject"] == 1 and row["split_by"] == f"{mode}:1:release"
            assert row["image_encoder"] == f"open_clip:{tiny_clip} (randomly initialised, frozen, head trained on " \
                                           f"the training images)"
            summary = rows[(f"{mode}-subject mean ± std over subjects", f"retrieval_top{k}")]
            assert summary["value"] == row["value"] and summary["spread"] == 0
        fold = run_dir / "protocols" / "retrieval" / f"{mode}-subject-1"
        for stage in ("teacher", "highlevel"):
            trained = {subjects[k] for k in trained_keys(fold, stage)}
            assert trained == ({1} if mode == "intra" else {2}), (mode, stage)
        assert load_config(fold / "config.yaml").data.split_by == f"{mode}:1:release"
    assert any("never trained on (checked before training)" in note for note in table["notes"]["retrieval"])
    assert "retrieval_top5" in protocols_html(run_dir)
