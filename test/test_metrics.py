"""Accuracy / confusion / IoU metrics on hand-computed examples."""
import math

import numpy as np
import pytest

from foundry_core.metrics import (accuracy, class_mean_accuracy, confusion, ground_consistency, instance_part_miou,
                                  mean_iou)


def test_accuracy():
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == pytest.approx(75.0)
    assert accuracy(np.array([3, 3]), np.array([3, 3])) == pytest.approx(100.0)
    assert accuracy(np.array([1, 0, 0]), np.array([0, 1, 1])) == pytest.approx(0.0)
    assert math.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_class_mean_accuracy():
    # class 0: 3/4 correct, class 1: 1/2 -> mean 62.5 (overall accuracy would be 4/6)
    pred = np.array([0, 0, 0, 1, 1, 0])
    target = np.array([0, 0, 0, 0, 1, 1])
    assert class_mean_accuracy(pred, target) == pytest.approx(62.5)
    assert accuracy(pred, target) == pytest.approx(400 / 6)


def test_confusion_rows_are_ground_truth():
    pred = np.array([0, 1, 1, 2, 0, 2])
    target = np.array([0, 1, 0, 2, 2, 2])
    conf = confusion(pred, target, 3)
    expected = np.array([[1, 1, 0],
                         [0, 1, 0],
                         [1, 0, 2]])
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == 6


def test_confusion_ignores_out_of_range_targets():
    pred = np.array([0, 1, 1, 2])
    target = np.array([0, -1, 3, 1])
    np.testing.assert_array_equal(confusion(pred, target, 3), [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_mean_iou():
    conf = np.array([[1, 1, 0],
                     [0, 1, 0],
                     [1, 0, 2]])
    # IoU0 = 1 / (2 + 2 - 1) = 1/3, IoU1 = 1 / (1 + 2 - 1) = 1/2, IoU2 = 2 / (3 + 2 - 2) = 2/3
    assert mean_iou(conf) == pytest.approx(100 * (1 / 3 + 1 / 2 + 2 / 3) / 3)


def test_mean_iou_skips_absent_classes():
    conf = np.array([[2, 0, 0],
                     [0, 0, 0],       # class 1 neither in ground truth nor prediction
                     [0, 0, 3]])
    assert mean_iou(conf) == pytest.approx(100.0)
    conf[0, 2] = 1                    # one class-0 point predicted as 2
    # IoU0 = 2/3, IoU2 = 3/4
    assert mean_iou(conf) == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)
    assert math.isnan(mean_iou(np.zeros((3, 3), dtype=int)))


def test_instance_part_miou_absent_parts_count_as_one():
    # shape 0 (parts 0,1,2): part 0 IoU 2/3, part 1 IoU 1/2, part 2 absent from both -> 1
    # shape 1 (parts 3,4):   part 3 IoU 1,   part 4 absent from both -> 1
    pred = np.array([[0, 0, 1, 1],
                     [3, 3, 3, 3]])
    target = np.array([[0, 0, 0, 1],
                       [3, 3, 3, 3]])
    parts = [np.array([0, 1, 2]), np.array([3, 4])]
    shape0 = (2 / 3 + 1 / 2 + 1.0) / 3
    shape1 = 1.0
    assert instance_part_miou(pred, target, parts) == pytest.approx(100 * (shape0 + shape1) / 2)
    # only the shape's own category parts count: a part outside the list is ignored
    assert instance_part_miou(pred[:1], target[:1], [np.array([0, 1])]) == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert math.isnan(instance_part_miou(pred[:0], target[:0], []))


def test_instance_part_miou_wrong_part_gets_zero():
    pred = np.array([[1, 1]])
    target = np.array([[0, 0]])
    assert instance_part_miou(pred, target, [np.array([0, 1])]) == pytest.approx(0.0)


def test_ground_consistency_on_a_road_with_a_car_and_far_points():
    rng = np.random.default_rng(0)
    road = np.c_[rng.uniform(-10, 10, (900, 2)), np.full(900, -1.7)]
    car = np.c_[rng.uniform(3, 5, (100, 2)), rng.uniform(-0.6, 0.0, 100)]       # 1.1..1.7 m above the road
    far = np.c_[rng.uniform(30, 40, (50, 2)), np.full(50, 5.0)]                   # outside the radius: ignored
    xyz = np.concatenate([road, car, far])
    labels = np.r_[np.zeros(900, int), np.ones(100, int), np.zeros(50, int)]
    assert ground_consistency(xyz, labels, ground=0) == (100.0, 100.0)
    labels[:450] = 3                                                             # half the road called clutter
    labels[900:950] = 0                                                          # half the car called ground
    road_ok, high_ok = ground_consistency(xyz, labels, ground=0)
    assert road_ok == pytest.approx(50.0) and high_ok == pytest.approx(50.0)
    labels[:] = -1                                                               # nothing labelled
    assert all(math.isnan(v) for v in ground_consistency(xyz, labels, ground=0))
