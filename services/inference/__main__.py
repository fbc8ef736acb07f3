"""``python -m services.inference``: the inference worker (queue ``inference``)."""

from services.common.worker import main

if __name__ == "__main__":
    main(stage="infer")
