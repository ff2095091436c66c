"""File storage for ceremony artifacts and contributions under the data dir."""
