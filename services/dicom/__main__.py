"""``python -m services.dicom``: the DICOM gateway."""

from services.dicom.main import main

if __name__ == "__main__":
    main()
