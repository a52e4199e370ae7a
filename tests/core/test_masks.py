"""Region masks: 25% margin boxes, any latent grid, faces never vanish, overlap rules."""

import pytest
import torch

from instantfamily_core.masks import enlarge_box, latent_grid, masks_from_boxes, masks_from_images, masks_on_grid


def test_margin_scales_the_box_about_its_centre_and_clips():
    box = torch.tensor([0.4, 0.4, 0.6, 0.8])
    assert torch.allclose(enlarge_box(box, 0.25), torch.tensor([0.375, 0.35, 0.625, 0.85]))
    assert torch.allclose(enlarge_box(torch.tensor([0.0, 0.0, 0.2, 0.2]), 1.0), torch.tensor([0.0, 0.0, 0.3, 0.3]))


def test_box_masks_cover_the_enlarged_box_in_pixels():
    masks = masks_from_boxes(torch.tensor([[20.0, 40, 60, 80]]), (100, 200), margin=0.25)
    on = masks.masks[0].nonzero()
    assert on[:, 0].min() == 35 and on[:, 0].max() == 84  # rows 35..84: 40 px tall box grown to 50
    assert on[:, 1].min() == 15 and on[:, 1].max() == 64
    assert torch.allclose(masks.centres, torch.tensor([[40 / 200, 60 / 100]]))


@pytest.mark.parametrize(
    "latent, expected",
    [
        ((64, 64), [(64, 64), (32, 32), (16, 16), (8, 8)]),
        ((64, 36), [(64, 36), (32, 18), (16, 9), (8, 5)]),
        ((75, 43), [(75, 43), (38, 22), (19, 11), (10, 6)]),
    ],
)
def test_latent_grid_follows_ceil_division(latent, expected):
    for grid in expected:
        assert latent_grid(grid[0] * grid[1], latent) == grid


def test_latent_grid_rejects_impossible_token_count():
    with pytest.raises(ValueError, match="no downsampling"):
        latent_grid(1000, (64, 64))


@pytest.mark.parametrize("grid", [(64, 64), (32, 32), (16, 16), (8, 8), (5, 3), (9, 16), (1, 1)])
def test_tiny_faces_never_vanish(grid):
    # a 6x6 px face in a 512x512 image is far smaller than one 8x8 cell
    masks = masks_from_boxes(torch.tensor([[300.0, 100, 306, 106], [10, 10, 16, 16]]), (512, 512))
    on = masks_on_grid(masks, grid)
    assert on.shape == (2, grid[0] * grid[1])
    assert on.sum(dim=1).min() >= 1
    h, w = grid
    row, col = int(masks.centres[0, 1] * h), int(masks.centres[0, 0] * w)
    assert on[0, row * w + col]


def test_large_box_on_coarse_grid_marks_the_covered_cells():
    masks = masks_from_boxes(torch.tensor([[0.0, 0, 256, 512]]), (512, 512), margin=0.0)
    on = masks_on_grid(masks, (8, 8)).reshape(8, 8)
    assert on[:, :4].all() and not on[:, 4:].any()


def test_overlap_both_keeps_both_and_nearest_splits():
    masks = masks_from_boxes(torch.tensor([[100.0, 100, 300, 300], [200, 100, 400, 300]]), (512, 512), margin=0.0)
    both = masks_on_grid(masks, (16, 16), "both")
    nearest = masks_on_grid(masks, (16, 16), "nearest")
    shared = both[0] & both[1]
    assert shared.sum() > 0
    assert not (nearest[0] & nearest[1]).any()
    assert ((nearest[0] | nearest[1]) == (both[0] | both[1])).all()


def test_user_masks_use_their_centroid_and_reject_empty_masks():
    drawn = torch.zeros(2, 40, 40)
    drawn[0, 0:10, 0:20] = 1
    drawn[1, 30:40, 20:40] = 1
    masks = masks_from_images(drawn)
    assert torch.allclose(masks.centres, torch.tensor([[0.25, 0.125], [0.75, 0.875]]))
    drawn[1] = 0
    with pytest.raises(ValueError, match="mask 1 is empty"):
        masks_from_images(drawn)


def test_an_empty_mask_stays_off_at_every_grid():
    masks = masks_from_boxes(torch.tensor([[10.0, 10, 20, 20]]), (64, 64))
    masks.masks.zero_()
    for grid in [(8, 8), (1, 1), (64, 64)]:
        assert not masks_on_grid(masks, grid).any()


def test_centre_crop_box_matches_comfyuis_rule():
    from instantfamily_core.masks import centre_crop_box

    assert centre_crop_box((256, 256), (64, 96)) == (43, 0, 170, 256)  # square template, 3:2 latent: rows cut
    assert centre_crop_box((256, 512), (64, 64)) == (0, 128, 256, 256)  # wide template, square latent
    assert centre_crop_box((300, 200), (75, 50)) == (0, 0, 300, 200)  # same aspect: nothing cut


def test_crop_to_latent_keeps_masks_centres_and_boxes_on_the_same_pixels():
    from instantfamily_core.masks import crop_to_latent

    boxes = torch.tensor([[20.0, 100.0, 60.0, 140.0], [110.0, 5.0, 140.0, 35.0]])
    masks = masks_from_boxes(boxes, (256, 256))
    cropped = crop_to_latent(masks, (64, 96))
    assert cropped.image_size == (170, 256)
    assert torch.equal(cropped.masks, masks.masks[:, 43:213, :])
    # the first face's centre, in crop coordinates, is where its mask is
    cx, cy = cropped.centres[0].tolist()
    assert cropped.masks[0, int(cy * 170), int(cx * 256)] == 1
    assert abs(cy - (120 - 43) / 170) < 1e-6
    # the second face lies above the crop: its centre is outside [0, 1] and no grid cell is forced on
    assert cropped.centres[1, 1] < 0
    assert not masks_on_grid(cropped, (64, 96))[1].any()
    assert crop_to_latent(masks, (32, 32)) is masks  # same aspect: unchanged
