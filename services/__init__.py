"""radreport's runtime services: one package each, plus ``common`` for what they share.

Nothing under ``services`` imports torch: the runtime images ship without it.
"""
