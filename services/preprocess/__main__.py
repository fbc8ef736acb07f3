"""``python -m services.preprocess``: the preprocess worker."""

from services.common.worker import main

if __name__ == "__main__":
    main(stage="preprocess")
