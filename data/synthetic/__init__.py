"""A synthetic detection dataset and video of shapes: the project's offline default data.

``python -m data.synthetic --out DIR --num N --seed S`` writes the custom VOC layout (see ``data.custom``)::

    DIR/JPEGImages/<id>.jpg                     ids 000001, 000002, ...
    DIR/Annotations/<id>.xml                    VOC XML: <size>, <object><name>/<truncated>/<difficult>/<bndbox>
    DIR/ImageSets/Main/{train,val,test,trainval}.txt
    DIR/labels.txt                              circle, square, triangle, star, ring (or the --classes subset)
    DIR/annotations/instances_{train,val,test,trainval}.json   the same boxes as COCO JSON
    DIR/synthetic.json                          the arguments and counts

``--classes circle,square,triangle`` draws only those shapes (labels.txt, the COCO categories and the summary list
only them, in that order); an unknown name is a usage error listing the shapes.

Content: five classes that differ in form (circle/ellipse, square/rectangle, triangle, five-pointed star,
ring = annulus showing the background through its hole) with random colours, outlines, sizes from 12 px to
~90 % of the frame (mostly 24-200 px), aspect 0.6-1.6, any rotation, overlap, occlusion and truncation at
the border, on varied backgrounds (gradients, smooth colour fields, stripes, checkers, blocks, sensor noise,
clutter: lines, arcs, crosses, L-shapes, bean-shaped blobs and text, none of them one of the classes; photos
from ``--backgrounds DIR`` when given — no package installed here ships photographs offline). Image sizes
are drawn in 300-480 x 240-400.

Boxes are the *visible* extent of each object (VOC convention). An object whose visible box has a side
under 16 px or that is more than 60 % occluded by later objects is ``difficult=1``; in the COCO JSON
difficult objects are ``iscrowd=1`` so that both VOC and COCO evaluation ignore them. Objects with almost
nothing visible are not annotated. VOC ``<bndbox>`` values are 1-based pixel indices (inclusive); the COCO
``bbox`` is ``[xmin-1, ymin-1, xmax-xmin, ymax-ymin]`` so both loaders give identical targets.

Splits: train 80 %, val 5 %, test 15 % by default (``--val-frac`` / ``--test-frac``); every split gets at least
one image when ``N >= 3``. ``trainval`` = train + val.

Determinism: each image uses its own generator seeded with ``(seed, index)``, so the same arguments give the
same bytes (for the same OpenCV build), and any image can be regenerated alone.

Modules: ``shapes`` (the classes as polygons, visible boxes), ``backgrounds`` (backgrounds, clutter, noise),
``scene`` (one image's objects), ``dataset`` (writing the VOC/COCO layout and splits), ``video`` (the video, the
one module here that uses ``utils.media``), ``cli`` / ``__main__`` (the command line).

``--video PATH`` writes a video (H.264 / yuv420p through imageio-ffmpeg, optional AAC sine-tone audio) of the
same shapes moving, scaling, rotating and entering / leaving over a slowly panning background, plus its
per-frame ground truth as ``PATH.json``.
"""
from data.synthetic.backgrounds import add_noise, draw_clutter, make_background, make_noise_bank
from data.synthetic.dataset import (DEFAULT_TEST_FRAC, DEFAULT_VAL_FRAC, coco_dataset, generate_dataset, load_photos,
                                    split_ids, voc_xml)
from data.synthetic.scene import random_shape, render_image
from data.synthetic.shapes import (DIFFICULT_MIN_SIDE, DIFFICULT_OCCLUSION, MIN_VISIBLE_PIXELS, SHAPE_CLASSES,
                                   ObjectAnnotation, Shape, render_shapes, shape_indices)
from data.synthetic.video import generate_video

__all__ = ["DEFAULT_TEST_FRAC", "DEFAULT_VAL_FRAC", "DIFFICULT_MIN_SIDE", "DIFFICULT_OCCLUSION", "MIN_VISIBLE_PIXELS",
           "SHAPE_CLASSES", "ObjectAnnotation", "Shape", "add_noise", "coco_dataset", "draw_clutter",
           "generate_dataset", "generate_video", "load_photos", "make_background", "make_noise_bank", "random_shape",
           "render_image", "render_shapes", "shape_indices", "split_ids", "voc_xml"]
