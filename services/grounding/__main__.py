"""``python -m services.grounding``: the grounding worker."""

from services.common.worker import main

if __name__ == "__main__":
    main(stage="ground")
