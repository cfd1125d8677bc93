"""Sample data: the synthetic demo slide with its ground-truth nuclei."""

from __future__ import annotations


def demo_slide():
    from ..demo import demo_slide as make_demo
    from ..demo import read_label_pyramid
    from ..io import open_slide
    from ..layers import labels_layer, slide_layer

    demo = make_demo()
    slide = open_slide(demo.slide)
    truth = labels_layer(
        slide,
        read_label_pyramid(demo.labels),
        name="ground truth nuclei",
        kind="ground_truth",
        source=str(demo.labels),
    )
    truth[1]["visible"] = False
    return [slide_layer(slide, name="demo H&E slide"), truth]
