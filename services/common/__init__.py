"""What several services share: settings, report schemas, store, blobs, queue app, logging."""
