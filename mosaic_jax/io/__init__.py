"""Storage: local paths and gs:// URLs behind one path type (`storage`), and the local cache of remote data."""
