"""The README's Soft Mask example runs as written and does what its comments say."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_soft_mask_example_runs():
    text = README.read_text()
    section = text[text.index("## The Soft Mask"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README, on purpose
    labels, case = scope["labels"], scope["case"]
    # The last call is strategy 1 from the true mask: its binary mask is that mask.
    np.testing.assert_array_equal(labels.binary_mask, case.true_mask)
    assert labels.trimap.dtype == np.uint8 and set(np.unique(labels.trimap)) <= {0, 128, 255}
    assert labels.soft_mask.dtype == np.float32 and 0 <= labels.soft_mask.min() <= labels.soft_mask.max() <= 1
    # and the RECIST result it printed agrees with the truth as the comment says
    recist = scope["label_from_recist"](case.image_hu, case.recist, scope["params"])
    assert scope["dice"](recist.binary_mask, case.true_mask) > 0.95
