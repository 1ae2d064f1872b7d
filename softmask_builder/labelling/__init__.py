"""The labelling stages: pure functions on arrays (window, crop, trimap, RECIST prior, closed-form
matting, soft-label baselines, metrics) and the pipeline that chains them per prior kind
(DSNet Sec. III-A). No file is read or written here."""
