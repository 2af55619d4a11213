"""Annotation geometry against hand-computed values, and the FineRS-4k rasterisation
against OpenCV called the way the authors' code calls it."""
import cv2
import numpy as np
import pytest

from reproseg.data.masks import (GeometryError, as_polygon, bucket_of_percent, centre_jitter_points,
                                 check_polygon, clip_to_frame, fill_polygon_opencv, inscribed_circle_points,
                                 polygon_to_rle, polygon_to_rle_opencv, rle_area, rle_box, rle_decode,
                                 size_bucket)


def authors_mask(points, width, height):
    """JiazuoYu/Fines get_mask_from_points: the JSON's points straight into OpenCV."""
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.polylines(mask, np.array([points], dtype=np.int32), True, 1, 1)
    cv2.fillPoly(mask, np.array([points], dtype=np.int32), 1)
    return mask.astype(bool)


def test_rectangle_polygon_to_rle_box_area():
    # pycocotools (COCO polygons): corners on pixel edges, x 10..20, y 20..25 covers
    # pixels x=10..19, y=20..24.
    rle = polygon_to_rle(as_polygon([[10, 20], [20, 20], [20, 25], [10, 25]]), 40, 30)
    assert rle_area(rle) == 10 * 5
    assert rle_box(rle) == [10.0, 20.0, 20.0, 25.0]
    mask = rle_decode(rle)
    assert mask.shape == (30, 40)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 19, 20, 24)


def test_opencv_rectangle_covers_its_outline():
    # The authors' fill: vertices are pixel indices and the outline is part of the mask,
    # so the same rectangle covers x=10..20, y=20..25: 11 x 6 = 66 pixels, not 50.
    poly = as_polygon([[10, 20], [20, 20], [20, 25], [10, 25]])
    rle = polygon_to_rle_opencv(poly, 40, 30)
    assert rle_area(rle) == 11 * 6
    assert rle_box(rle) == [10.0, 20.0, 21.0, 26.0]
    assert rle["size"] == [30, 40] and isinstance(rle["counts"], str)
    assert rle_area(polygon_to_rle(poly, 40, 30)) == 50          # pycocotools differs


def test_opencv_fill_truncates_vertices():
    # (2.9, 1.9), (5.99, 1.2), (5.5, 4.7), (2.1, 4.2) truncate to the rectangle (2, 1)-(5, 4):
    # pixels x=2..5, y=1..4 = 16.
    mask = fill_polygon_opencv([[2.9, 1.9], [5.99, 1.2], [5.5, 4.7], [2.1, 4.2]], 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[1:5, 2:6] = True
    assert (mask == expected).all()


def test_opencv_triangle_by_hand():
    # (0, 0), (4, 0), (0, 4): every pixel with x + y <= 4, 5 + 4 + 3 + 2 + 1 = 15.
    mask = fill_polygon_opencv([(0, 0), (4, 0), (0, 4)], 6, 6)
    yy, xx = np.indices((6, 6))
    assert (mask == (xx + yy <= 4)).all()


@pytest.mark.parametrize("points, width, height", [
    ([[10, 20], [20, 20], [20, 25], [10, 25]], 40, 30),            # pycocotools: 50 px, here 66
    ([[0, 0], [4, 0], [0, 4]], 6, 6),                                # pycocotools: 6 px, here 15
    ([[2.9, 1.9], [5.99, 1.2], [5.5, 4.7], [2.1, 4.2]], 8, 8),      # truncation
    ([[1, 1], [7, 1], [7, 7], [4, 3], [1, 7]], 9, 9),                # concave
    ([[3.3, 2.2], [30.7, 5.9], [12.5, 28.1], [27.4, 24.6], [2.2, 16.8]], 32, 32),  # self-intersecting
    ([[100.4, 50.6], [140.9, 52.2], [160.1, 90.7], [118.3, 101.5], [96.6, 80.2]], 200, 120),
])
def test_opencv_fill_equals_the_authors_pixel_for_pixel(points, width, height):
    assert (fill_polygon_opencv(as_polygon(points), width, height) == authors_mask(points, width, height)).all()
    assert (rle_decode(polygon_to_rle_opencv(as_polygon(points), width, height))
            == authors_mask(points, width, height)).all()


def test_pycocotools_differs_on_a_hand_made_polygon():
    points = [[10, 20], [20, 20], [20, 25], [10, 25]]
    coco = rle_decode(polygon_to_rle(as_polygon(points), 40, 30))
    authors = authors_mask(points, 40, 30)
    assert (authors & ~coco).sum() == 66 - 50 and not (coco & ~authors).any()


@pytest.mark.parametrize("points", [
    [[-0.5, 2], [5, 2], [5, 6]],                  # x -0.5 truncates to 0
    [[3, -0.99], [9.9, 4], [10.5, 9.5], [2, 10.9]],  # every side, < 1 px out of a 10 x 10 frame
])
def test_vertices_less_than_1px_outside_are_clipped_as_the_authors_do(points):
    poly = as_polygon(points)
    check_polygon(poly, 10, 10)                   # accepted
    clipped = clip_to_frame(poly, 10, 10)
    assert all(0 <= x <= 10 and 0 <= y <= 10 for x, y in clipped)
    # The clipped polygon gives the authors' pixels of the raw one (OpenCV clips the rest).
    assert (fill_polygon_opencv(clipped, 10, 10) == authors_mask(points, 10, 10)).all()
    assert clip_to_frame([(-0.5, 2.0), (10.5, 10.0)], 10, 10) == [(0.0, 2.0), (10.0, 10.0)]
def test_flat_polygon_is_accepted():
    assert as_polygon([1, 2, 3, 4, 5, 6]) == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]


@pytest.mark.parametrize("points, message", [
    ([[0, 0], [5, 5]], "degenerate"),
    ([[0, 0], [5, 5], [10, 10]], "zero area"),
    ([[0, 0], [41, 0], [41, 5]], "1 px or more outside"),     # 1 px out of the 40 px width
    ([[0, -1], [4, 0], [4, 5]], "1 px or more outside"),
    ([[0, 0], [4, 0], [4, 31.5]], "1 px or more outside"),
])
def test_bad_polygons(points, message):
    with pytest.raises(GeometryError, match=message):
        check_polygon(as_polygon(points), 40, 30)


def test_non_numeric_polygon():
    with pytest.raises(GeometryError):
        as_polygon([["a", 1], [2, 3], [4, 5]])
    with pytest.raises(GeometryError):
        as_polygon([[float("nan"), 1], [2, 3], [4, 5]])


@pytest.mark.parametrize("area, bucket", [
    # 1000 x 1000 image: 0.017 % is 170 px, 0.055 % is 550 px; both boundaries are XS.
    (169, "xxs"), (170, "xs"), (171, "xs"), (549, "xs"), (550, "xs"), (551, "s"), (1, "xxs"),
])
def test_size_bucket_exact_at_boundaries(area, bucket):
    assert size_bucket(area, 1000, 1000) == bucket


@pytest.mark.parametrize("percent, bucket", [
    # The authors' evaluation: s if > 0.055, xxs if < 0.017, else xs (both bounds xs).
    (0.0169, "xxs"), (0.017, "xs"), (0.0171, "xs"), (0.055, "xs"), (0.0551, "s"), (0.0, "xxs"), (0.5, "s"),
])
def test_bucket_of_area_percent(percent, bucket):
    assert bucket_of_percent(percent) == bucket


def test_size_bucket_4k():
    # 3840 x 2160 = 8,294,400 px; 0.017 % = 1410.048 px -> 1410 is XXS, 1411 XS.
    assert size_bucket(1410, 3840, 2160) == "xxs"
    assert size_bucket(1411, 3840, 2160) == "xs"
    # 0.055 % = 4561.92 px -> 4561 XS, 4562 S.
    assert size_bucket(4561, 3840, 2160) == "xs"
    assert size_bucket(4562, 3840, 2160) == "s"


def test_inscribed_circles_of_a_bar():
    # A 6 x 20 bar (rows 2..7, cols 3..22). The distance transform peaks at 3 on rows 4-5,
    # cols 5..20; the first peak in row-major order is (row 4, col 5) -> point (5.5, 4.5).
    # The second centre must be >= r1 + r2 = 6 px away: (row 4, col 11) -> (11.5, 4.5).
    mask = np.zeros((20, 30), bool)
    mask[2:8, 3:23] = True
    assert inscribed_circle_points(mask) == [[5.5, 4.5], [11.5, 4.5]]


def test_inscribed_circles_single_pixel():
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    assert inscribed_circle_points(mask) == [[3.5, 2.5], [3.5, 2.5]]


def test_centre_jitter_points_deterministic_and_inside():
    box = [10.0, 20.0, 30.0, 60.0]
    a = centre_jitter_points(box, 0.25, "0:x")
    assert a == centre_jitter_points(box, 0.25, "0:x")
    assert a != centre_jitter_points(box, 0.25, "0:y")
    assert a[0] == [20.0, 40.0]
    (px, py) = a[1]
    assert abs(px - 20) <= 0.25 * 20 and abs(py - 40) <= 0.25 * 40
