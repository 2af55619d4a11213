"""Annotation geometry against hand-computed values."""
import numpy as np
import pytest

from reproseg.data.masks import (GeometryError, as_polygon, centre_jitter_points, check_polygon,
                                 inscribed_circle_points, polygon_to_rle, rle_area, rle_box,
                                 rle_decode, size_bucket)


def test_rectangle_polygon_to_rle_box_area():
    # Corners on pixel edges: x 10..20, y 20..25 covers pixels x=10..19, y=20..24.
    rle = polygon_to_rle(as_polygon([[10, 20], [20, 20], [20, 25], [10, 25]]), 40, 30)
    assert rle_area(rle) == 10 * 5
    assert rle_box(rle) == [10.0, 20.0, 20.0, 25.0]
    mask = rle_decode(rle)
    assert mask.shape == (30, 40)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 19, 20, 24)


def test_flat_polygon_is_accepted():
    assert as_polygon([1, 2, 3, 4, 5, 6]) == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]


@pytest.mark.parametrize("points, message", [
    ([[0, 0], [5, 5]], "degenerate"),
    ([[0, 0], [5, 5], [10, 10]], "zero area"),
    ([[0, 0], [41, 0], [41, 5]], "outside"),
    ([[0, -1], [4, 0], [4, 5]], "outside"),
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
