"""mltrail."""
