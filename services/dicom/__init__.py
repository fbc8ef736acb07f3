"""The DICOM gateway: Storage SCP for studies from PACS, DICOM results sent back."""
