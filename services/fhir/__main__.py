"""``python -m services.fhir``: the fhir worker."""

from services.common.worker import main

if __name__ == "__main__":
    main(stage="format")
