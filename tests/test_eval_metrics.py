"""The pure metric functions of siglip.eval.metrics on hand-made matrices with known answers, and against
independent references (sorting, torch.topk, scikit-learn) on random matrices."""

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from siglip.eval.metrics import (
    class_ranks,
    image_retrieval_ranks,
    mean_per_class_recall,
    retrieval_metrics,
    text_retrieval_ranks,
    topk_accuracy,
    zero_shot_metrics,
)

# 3 images, 5 captions: image 0 has captions 0 and 1, image 1 has caption 2, image 2 has 3 and 4.
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.2, 0.3],
        [0.8, 0.7, 0.4, 0.6, 0.1],
        [0.1, 0.2, 0.3, 0.1, 0.6],
    ]
)
IMAGE_OF_TEXT = torch.tensor([0, 0, 1, 2, 2])


def test_retrieval_by_hand():
    # text -> image, per caption: column j, its image's score vs the others'
    assert image_retrieval_ranks(SCORES, IMAGE_OF_TEXT).tolist() == [1, 3, 2, 3, 1]
    # image -> text: best own caption (0.9; 0.4; 0.6), counting only OTHER images' captions ahead
    assert text_retrieval_ranks(SCORES, IMAGE_OF_TEXT).tolist() == [1, 4, 1]
    m = retrieval_metrics(SCORES, IMAGE_OF_TEXT)
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@5"] == 1.0
    assert m["image_retrieval_mean_rank"] == pytest.approx(2.0)
    assert m["image_retrieval_median_rank"] == 2.0
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@5"] == 1.0
    assert m["text_retrieval_mean_rank"] == pytest.approx(2.0)
    assert m["text_retrieval_median_rank"] == 1.0
    assert set(m) == {
        f"{d}_retrieval_{s}"
        for d in ("image", "text")
        for s in ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank")
    }


def test_retrieval_ties_count_against_the_query():
    s = torch.tensor([[0.5, 0.5], [0.5, 0.2]])
    image_of_text = torch.tensor([0, 1])
    assert image_retrieval_ranks(s, image_of_text).tolist() == [2, 2]
    assert text_retrieval_ranks(s, image_of_text).tolist() == [2, 2]
    # a constant model ranks everything last, never first
    flat = torch.zeros(3, 5)
    assert image_retrieval_ranks(flat, IMAGE_OF_TEXT).tolist() == [3] * 5
    assert text_retrieval_ranks(flat, IMAGE_OF_TEXT).tolist() == [4, 5, 4]  # own captions are not "ahead"
    assert retrieval_metrics(flat, IMAGE_OF_TEXT)["text_retrieval_recall@1"] == 0.0
    # two own captions tied at the top: still rank 1
    s = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.3, 0.8]])
    assert text_retrieval_ranks(s, torch.tensor([0, 0, 1])).tolist() == [1, 1]


def test_unreadable_image_is_a_miss_even_when_k_exceeds_the_candidates():
    valid = torch.tensor([True, False, True])
    m = retrieval_metrics(SCORES, IMAGE_OF_TEXT, valid)
    # image 1 ranks below every readable image: caption 1 -> rank 2, caption 3 -> rank 2;
    # caption 2 (image 1's own) is a miss and takes the worst rank, 3
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@10"] == pytest.approx(4 / 5)  # 10 > 3 images, still a miss
    assert m["image_retrieval_mean_rank"] == pytest.approx((1 + 2 + 3 + 2 + 1) / 5)
    assert m["text_retrieval_recall@10"] == pytest.approx(2 / 3)  # 10 > 5 captions, still a miss
    assert m["text_retrieval_mean_rank"] == pytest.approx((1 + 5 + 1) / 3)


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match="image 2 has no caption"):
        retrieval_metrics(torch.zeros(3, 2), torch.tensor([0, 1]))


def _sorted_rank(scores: list[float], correct: set[int]) -> int:
    """Position of the first correct candidate in a sort by score, wrong ones first on ties."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j in correct))
    return next(p for p, j in enumerate(order) if j in correct) + 1


def test_retrieval_ranks_match_a_sorting_reference_and_topk():
    g = torch.Generator().manual_seed(0)
    n_img, n_txt = 7, 20
    image_of_text = torch.cat([torch.arange(n_img), torch.randint(0, n_img, (n_txt - n_img,), generator=g)])
    # coarse scores: many exact ties
    s = torch.randint(0, 4, (n_img, n_txt), generator=g).float()
    want_i = [_sorted_rank(s[:, j].tolist(), {int(image_of_text[j])}) for j in range(n_txt)]
    want_t = [_sorted_rank(s[i].tolist(), set((image_of_text == i).nonzero().flatten().tolist())) for i in range(n_img)]
    assert image_retrieval_ranks(s, image_of_text, chunk=3).tolist() == want_i
    assert text_retrieval_ranks(s, image_of_text, chunk=2).tolist() == want_t
    # continuous scores (no ties): recall@k == CLIP_benchmark's "any correct index in topk"
    s = torch.randn(n_img, n_txt, generator=g)
    m = retrieval_metrics(s, image_of_text)
    own = image_of_text[None, :] == torch.arange(n_img)[:, None]  # (n_img, n_txt)
    for k in (1, 5, 10):
        t2i = (s.topk(min(k, n_img), dim=0).indices == image_of_text[None]).any(dim=0).float().mean()
        i2t = own.gather(1, s.topk(k, dim=1).indices).any(dim=1).float().mean()
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(t2i.item())
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(i2t.item())


def test_zero_shot_by_hand():
    s = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.5, 0.5, 0.1], [0.3, 0.6, 0.1]])
    y = torch.tensor([0, 1, 0, 2])
    assert class_ranks(s, y).tolist() == [1, 1, 2, 3]  # row 2: a tie with class 1 counts against it
    m = zero_shot_metrics(s, y)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == 1.0
    # class 0: 1 of 2, class 1: 1 of 1, class 2: never right -> (0.5 + 1 + 0) / 3
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    # a class with no examples (column 3) does not enter the mean
    s4 = torch.cat([s, torch.full((4, 1), -1.0)], dim=1)
    assert mean_per_class_recall(s4, y) == pytest.approx(0.5)
    # an unreadable image is wrong even at k >= number of classes
    valid = torch.tensor([False, True, True, True])
    assert topk_accuracy(s, y, 5, valid) == pytest.approx(0.75)
    assert mean_per_class_recall(s, y, valid) == pytest.approx(1 / 3)


def test_zero_shot_matches_topk_and_sklearn():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(200, 12, generator=g)
    y = torch.randint(0, 12, (200,), generator=g)
    for k in (1, 5):
        ref = (s.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()
        assert topk_accuracy(s, y, k) == pytest.approx(ref)
    ref = balanced_accuracy_score(y.numpy(), s.argmax(dim=1).numpy())
    assert mean_per_class_recall(s, y) == pytest.approx(ref)
