"""Training code of the shapes-world zoo: one module per shipped model, run as a script.

    python -m dsxai.zoo.training.yolo --out dsxai/zoo/weights          # YOLOv8 + YOLOv8-seg
    python -m dsxai.zoo.training.fasterrcnn --out dsxai/zoo/weights
    python -m dsxai.zoo.training.unet --out dsxai/zoo/weights

Nothing the library runs imports this package (loading, resolving and explaining a zoo model never trains), so
its optimisers, losses and data-parallel machinery stay out of every import of :mod:`dsxai`.
"""
